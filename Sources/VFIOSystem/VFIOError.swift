import SystemPackage

/// The one error VFIOKit throws.
///
/// It says which operation failed (``operation``: the request of an ioctl,
/// a syscall, or a step of VFIOKit's own, as a value code can match), the
/// errno as an `Errno` member, the object involved (a path, a BDF, an object
/// id), the facts of this failure, and what would fix it (``remedies``, as
/// values a front end words its own way). `description` is what a person
/// sees; the remedies appear in it in plain words:
///
/// ```swift
/// do { try ioas.map(buffer) } catch let e where e.operation == .ioctl(.iommuIOASMap) && e.errno == .noMemory {
///     // RLIMIT_MEMLOCK: e.remedies holds .raiseMemlock(...)
/// }
/// ```
public struct VFIOError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The failing operation: an ioctl (`.ioctl(.iommuIOASMap)`), a syscall
    /// (`.syscall(.open)`) or a VFIOKit step (`.step(.bind)`).
    public var operation: Operation
    /// The kernel's answer, when the kernel gave one.
    public var errno: Errno?
    /// What the operation was applied to: `/dev/iommu`, `0000:00:03.0`, `IOAS 2`.
    public var object: String?
    /// Extra facts about this failure (sizes asked, limits in force, members).
    public var detail: String?
    /// What would fix it, in order. For an errno from the kernel the common
    /// causes of that request and errno are filled in unless the thrower
    /// knew better.
    public var remedies: [Remedy]

    /// Builds an error; `remedies` nil means the common remedies for this
    /// operation and errno (none without an errno).
    public init(
        operation: Operation, errno: Errno? = nil, object: String? = nil,
        detail: String? = nil, remedies: [Remedy]? = nil
    ) {
        self.operation = operation
        self.errno = errno
        self.object = object
        self.detail = detail
        self.remedies = remedies ?? errno.map { CommonRemedies.remedies(operation: operation, errno: $0, object: object) } ?? []
    }

    /// An error VFIOKit detected itself, before or without asking the kernel.
    public static func invalid(_ operation: Operation, _ detail: String, object: String? = nil,
                               remedies: [Remedy] = []) -> VFIOError {
        VFIOError(operation: operation, object: object, detail: detail, remedies: remedies)
    }

    /// The remedies in plain words (`; ` between them), or nil when there are none.
    public var hint: String? { Remedy.describe(remedies) }

    /// The first line of ``description``: operation, object, errno and detail, without the remedies.
    public var summary: String {
        var s = operation.description
        if let object { s += " on \(object)" }
        s += " failed"
        if let errno { s += ": \(errno.name) (\(errno.rawValue), \(errno.message))" }
        if let detail { s += errno == nil ? ": \(detail)" : ". \(detail)" }
        return s
    }

    public var description: String {
        guard let hint else { return summary }
        return summary + "\n  hint: " + hint
    }
}

/// Names and messages of errnos as VFIOKit prints them.
extension Errno {
    /// ENODEV, by its meaning for VFIO and sysfs ("no such device"); swift-system
    /// calls it `operationNotSupportedByDevice`.
    public static var noSuchDevice: Errno { .operationNotSupportedByDevice }

    /// The C name of this errno (`EPERM`), or `E<number>` for one we do not name.
    public var name: String { Errno.names[rawValue] ?? "E\(rawValue)" }

    /// The C library's text for this errno, without SystemPackage's decoration.
    public var message: String { Errno.messages[rawValue] ?? "error \(rawValue)" }

    static let names: [CInt: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG",
        9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY",
        17: "EEXIST", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 24: "EMFILE",
        25: "ENOTTY", 27: "EFBIG", 28: "ENOSPC", 30: "EROFS", 34: "ERANGE", 38: "ENOSYS",
        61: "ENODATA", 62: "ETIME", 75: "EOVERFLOW", 90: "EMSGSIZE", 95: "EOPNOTSUPP",
        110: "ETIMEDOUT", 125: "ECANCELED",
    ]
    static let messages: [CInt: String] = [
        1: "Operation not permitted", 2: "No such file or directory", 3: "No such process",
        4: "Interrupted system call", 5: "Input/output error", 6: "No such device or address",
        7: "Argument list too long", 9: "Bad file descriptor", 11: "Resource temporarily unavailable",
        12: "Cannot allocate memory", 13: "Permission denied", 14: "Bad address",
        16: "Device or resource busy", 17: "File exists", 19: "No such device", 20: "Not a directory",
        21: "Is a directory", 22: "Invalid argument", 24: "Too many open files",
        25: "Inappropriate ioctl for device", 27: "File too large", 28: "No space left on device",
        30: "Read-only file system", 34: "Numerical result out of range", 38: "Function not implemented",
        61: "No data available", 62: "Timer expired", 75: "Value too large for defined data type",
        90: "Message too long", 95: "Operation not supported", 110: "Connection timed out",
        125: "Operation canceled",
    ]
}
