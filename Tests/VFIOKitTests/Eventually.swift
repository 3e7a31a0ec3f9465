/// Waits up to `limit` for `done`, polling every 5 ms; true when it came. For
/// conditions another thread brings about (a cancel taking effect, a wait ending).
func eventually(_ limit: Duration = .seconds(10), _ done: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + limit
    while !done() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    return done()
}
