// Host-only interrupt rows (`--host-irq`): the async waits on a real eventfd that the
// awaiting task signals itself (a stand-in for an MSI: the kernel's side is one write),
// against the same write + poll + read in C. For profiling the awaiting code with
// callgrind on the host: `valgrind --tool=callgrind ... vfiokit-bench --host-irq --count-out F`.

import CBenchSupport
import Foundation
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

func hostIRQCases() throws -> [HostCase] {
    let e = try EventFD()
    let fd = e.fd.numberForHandoff
    let executor = try InterruptExecutor()
    var cases: [HostCase] = []
    cases.append(HostCase(name: "eventfd write + poll + read (C)", iterations: 20_000, countIterations: 200) { n in
        precondition(bench_raw_eventfd_roundtrip(fd, Int32(n)) == 0)
    })
    cases.append(HostCase(name: "eventfd write + wait (blocking)", iterations: 20_000, countIterations: 200) { n in
        var one: UInt64 = 1
        for _ in 0..<n {
            _ = write(fd, &one, 8)
            precondition((try? e.wait(timeout: .seconds(1))) != nil)
        }
    })
    cases.append(HostCase(name: "interrupts()", iterations: 5_000, countIterations: 200) { n in
        _ = awaitBlocking {
            do {
                var one: UInt64 = 1
                var it = e.interrupts().makeAsyncIterator()
                for _ in 0..<n {
                    _ = write(fd, &one, 8)
                    let got = await it.next(); precondition(got != nil)
                }
            }
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return 0
        }
    })
    cases.append(HostCase(name: "interrupts(on:), executor preference", iterations: 20_000, countIterations: 200) { n in
        _ = awaitBlocking {
            await withTaskExecutorPreference(executor) {
                var one: UInt64 = 1
                var it = e.interrupts(on: executor).makeAsyncIterator()
                for _ in 0..<n {
                    _ = write(fd, &one, 8)
                    let got = await it.next(); precondition(got != nil)
                }
            }
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return 0
        }
    })
    cases.append(HostCase(name: "interrupts(on:), preference, for await", iterations: 20_000, countIterations: 200) { n in
        _ = awaitBlocking {
            await withTaskExecutorPreference(executor) {
                var one: UInt64 = 1
                var left = n
                _ = write(fd, &one, 8)
                for await _ in e.interrupts(on: executor) {
                    left -= 1
                    if left == 0 { break }
                    _ = write(fd, &one, 8)
                }
            }
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return 0
        }
    })
    cases.append(HostCase(name: "withInterrupts(on:), preference", iterations: 20_000, countIterations: 200) { n in
        _ = awaitBlocking {
            await withTaskExecutorPreference(executor) {
                await e.withInterrupts(on: executor) { interrupts in
                    var one: UInt64 = 1
                    var it = interrupts.makeAsyncIterator()
                    for _ in 0..<n {
                        _ = write(fd, &one, 8)
                        let got = await it.next(); precondition(got != nil)
                    }
                }
            }
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return 0
        }
    })
    cases.append(HostCase(name: "withInterrupts()", iterations: 5_000, countIterations: 200) { n in
        _ = awaitBlocking {
            await e.withInterrupts { interrupts in
                var one: UInt64 = 1
                var it = interrupts.makeAsyncIterator()
                for _ in 0..<n {
                    _ = write(fd, &one, 8)
                    let got = await it.next(); precondition(got != nil)
                }
            }
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return 0
        }
    })
    return cases
}

func runHostIRQ(countFile: String?, countsFrom: String?) throws {
    let cases = try hostIRQCases()
    if let countFile {
        try countUnderCallgrind(cases, into: countFile)
        return
    }
    let counts = countsFrom.map(readCounts) ?? [:]
    print("vfiokit-bench --host-irq: a real eventfd signalled by the awaiting task, median of 7 rounds")
    print("operation".padding(toLength: 40, withPad: " ", startingAt: 0) + "  ns/interrupt  allocs/interrupt  instr/interrupt")
    for c in cases {
        let (ns, allocations) = timeHostCase(c)
        print(c.name.padding(toLength: 40, withPad: " ", startingAt: 0)
              + String(format: " %13.0f %17.2f ", ns, allocations)
              + rightAligned(counts[c.name].map { String(format: "%.0f", $0.1) } ?? "-", 16))
    }
}
