// Targets for what users type: vfioctl's argument values.
@testable import VFIOCommands
import VFIOSystem

@Sendable func fuzzCLIValues(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    if let n = ArgumentValues.number(text) {
        fuzzCheck(ArgumentValues.number(String(n)) == n, "\(n) does not parse back from decimal")
        fuzzCheck(ArgumentValues.number("0x" + String(n, radix: 16)) == n, "\(n) does not parse back from hex")
    }
    if let s = ArgumentValues.size(text) {
        fuzzCheck(ArgumentValues.size(String(s)) == s, "size \(s) does not parse back")
    }
    _ = parseByteSize(text)
    if let m = try? MapRequest(parsing: text) {
        fuzzCheck(m.size > 0 && m.size % MapRequest.page == 0, "--map \(text): size \(m.size)")
        if let iova = m.iova?.rawValue {
            fuzzCheck(iova % MapRequest.page == 0, "--map \(text): IOVA 0x\(String(iova, radix: 16))")
            fuzzCheck(iova <= UInt64.max - (m.size - 1), "--map \(text): the range wraps")
        }
        let spelled = String(m.size) + (m.iova.map { "@0x" + String($0.rawValue, radix: 16) } ?? "") + "," + m.backing.rawValue
        fuzzCheck((try? MapRequest(parsing: spelled)) == m, "--map \(text) does not parse back as \(spelled)")
    }
    _ = try? IOASChoice(parsing: text)
    _ = try? HWPTRequest(parsing: text)
    if let a = try? PCIAddress(parsing: text) {
        fuzzCheck((try? PCIAddress(parsing: a.description)) == a, "\(text) -> \(a) does not parse back")
    }
    var r = FuzzReader(bytes)
    let width = Int(r.u8() % 10)
    _ = try? AccessWidth.check(width: width, allowed: [1, 2, 4, 8], offset: r.u64(), value: r.u64())
    _ = AccessWidth.hex(r.u64(), width: width)
}
