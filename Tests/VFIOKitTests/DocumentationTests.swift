import Foundation
import Testing
import VFIOCommands
import VFIOKit

/// The DocC catalog (Sources/VFIOKit/VFIOKit.docc) against the code it shows.
@Suite struct DocumentationTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func text(_ relative: String) throws -> String {
        try String(contentsOf: root.appendingPathComponent(relative), encoding: .utf8)
    }

    /// Lines with their common leading indentation removed; trailing blank lines dropped.
    static func dedented(_ lines: [Substring]) -> [String] {
        var lines = lines.map(String.init)
        while lines.last?.allSatisfy(\.isWhitespace) == true { lines.removeLast() }
        let indent = lines.filter { !$0.allSatisfy(\.isWhitespace) }
            .map { $0.prefix(while: { $0 == " " }).count }.min() ?? 0
        return lines.map { $0.allSatisfy(\.isWhitespace) ? "" : String($0.dropFirst(indent)) }
    }

    /// The lines between `// getting-started: begin` and `// getting-started: end`.
    static func markedRegion(_ source: String) -> [String]? {
        let lines = source.split(separator: "\n", omittingEmptySubsequences: false)
        guard let b = lines.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces) == "// getting-started: begin" }),
              let e = lines.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces) == "// getting-started: end" }),
              b < e else { return nil }
        return dedented(Array(lines[(b + 1)..<e]))
    }

    /// The first ```swift block of a Markdown text.
    static func firstSwiftBlock(_ markdown: String) -> [String]? {
        let lines = markdown.split(separator: "\n", omittingEmptySubsequences: false)
        guard let b = lines.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces) == "```swift" }),
              let e = lines[(b + 1)...].firstIndex(where: { $0.trimmingCharacters(in: .whitespaces) == "```" }) else {
            return nil
        }
        return dedented(Array(lines[(b + 1)..<e]))
    }

    /// The article's driver is the code the guest runs
    /// (`GettingStartedTests/theArticlesDriverMovesBytesThroughTheIOMMU`): the
    /// article's first Swift code block equals the test file's marked region.
    @Test func gettingStartedCodeIsTheGuestTest() throws {
        let article = try #require(Self.firstSwiftBlock(try Self.text("Sources/VFIOKit/VFIOKit.docc/GettingStarted.md")),
                                   "GettingStarted.md has no ```swift block")
        let test = try #require(Self.markedRegion(try Self.text("Tests/VFIOKitGuestTests/GettingStartedTests.swift")),
                                "GettingStartedTests.swift has no `// getting-started: begin/end` region")
        #expect(test.count > 20, "the marked region is the whole driver")
        for (i, (a, t)) in zip(article, test).enumerated() where a != t {
            Issue.record("line \(i + 1) differs:\n  article: \(a)\n  test:    \(t)")
            break
        }
        #expect(article.count == test.count, "the article's block has \(article.count) lines, the test's region \(test.count)")
    }

    /// The comparison can fail: a changed line is found.
    @Test func aChangedLineIsCaught() {
        let region = Self.markedRegion("x\n    // getting-started: begin\n    let a = 1\n\n    let b = 2\n    // getting-started: end\n")
        let block = Self.firstSwiftBlock("Text\n\n```swift\nlet a = 1\n\nlet b = 3\n```\n")
        #expect(region == ["let a = 1", "", "let b = 2"])
        #expect(block == ["let a = 1", "", "let b = 3"])
        #expect(region != block)
    }

    /// The error texts ErrorsAndRemedies.md prints are what the library and
    /// vfioctl print for that error.
    @Test func errorsArticleShowsTheRealTexts() throws {
        let article = try Self.text("Sources/VFIOKit/VFIOKit.docc/ErrorsAndRemedies.md")
        let address = try PCIAddress(parsing: "0000:00:03.0")
        let e = VFIOError(operation: .syscall(.open), errno: .noSuchFileOrDirectory, object: "/dev/vfio/devices/vfio0",
                          remedies: [.bindToVFIO(address), .diagnose(address)])
        for text in [e.description, CLIWording.message(e)] {
            #expect(article.contains(text), "the article does not show:\n\(text)")
        }
    }
}
