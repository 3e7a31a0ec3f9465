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

    /// The C name of this errno (`EPERM`), or `E<number>` for a number Linux does not define.
    public var name: String { Errno.names[rawValue] ?? "E\(rawValue)" }

    /// The C library's text for this errno, without SystemPackage's decoration.
    public var message: String { Errno.messages[rawValue] ?? "error \(rawValue)" }

    // Every errno Linux defines (include/uapi/asm-generic/errno-base.h and errno.h; an alias
    // such as EWOULDBLOCK or ENOTSUP by its first name) with glibc's text, and the
    // kernel-internal ones of include/linux/errno.h (ENOTSUPP, EPROBE_DEFER, ...) that a driver
    // can leak to userspace, with the kernel's comment for text. ErrnoNameTests checks them
    // against glibc's strerrorname_np and strerror.
    static let names: [CInt: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG", 8: "ENOEXEC", 9: "EBADF",
        10: "ECHILD", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 15: "ENOTBLK", 16: "EBUSY",
        17: "EEXIST", 18: "EXDEV", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 23: "ENFILE",
        24: "EMFILE", 25: "ENOTTY", 26: "ETXTBSY", 27: "EFBIG", 28: "ENOSPC", 29: "ESPIPE", 30: "EROFS",
        31: "EMLINK", 32: "EPIPE", 33: "EDOM", 34: "ERANGE", 35: "EDEADLK", 36: "ENAMETOOLONG", 37: "ENOLCK",
        38: "ENOSYS", 39: "ENOTEMPTY", 40: "ELOOP", 42: "ENOMSG", 43: "EIDRM", 44: "ECHRNG", 45: "EL2NSYNC",
        46: "EL3HLT", 47: "EL3RST", 48: "ELNRNG", 49: "EUNATCH", 50: "ENOCSI", 51: "EL2HLT", 52: "EBADE",
        53: "EBADR", 54: "EXFULL", 55: "ENOANO", 56: "EBADRQC", 57: "EBADSLT", 59: "EBFONT", 60: "ENOSTR",
        61: "ENODATA", 62: "ETIME", 63: "ENOSR", 64: "ENONET", 65: "ENOPKG", 66: "EREMOTE", 67: "ENOLINK",
        68: "EADV", 69: "ESRMNT", 70: "ECOMM", 71: "EPROTO", 72: "EMULTIHOP", 73: "EDOTDOT", 74: "EBADMSG",
        75: "EOVERFLOW", 76: "ENOTUNIQ", 77: "EBADFD", 78: "EREMCHG", 79: "ELIBACC", 80: "ELIBBAD", 81: "ELIBSCN",
        82: "ELIBMAX", 83: "ELIBEXEC", 84: "EILSEQ", 85: "ERESTART", 86: "ESTRPIPE", 87: "EUSERS", 88: "ENOTSOCK",
        89: "EDESTADDRREQ", 90: "EMSGSIZE", 91: "EPROTOTYPE", 92: "ENOPROTOOPT", 93: "EPROTONOSUPPORT",
        94: "ESOCKTNOSUPPORT", 95: "EOPNOTSUPP", 96: "EPFNOSUPPORT", 97: "EAFNOSUPPORT", 98: "EADDRINUSE",
        99: "EADDRNOTAVAIL", 100: "ENETDOWN", 101: "ENETUNREACH", 102: "ENETRESET", 103: "ECONNABORTED",
        104: "ECONNRESET", 105: "ENOBUFS", 106: "EISCONN", 107: "ENOTCONN", 108: "ESHUTDOWN", 109: "ETOOMANYREFS",
        110: "ETIMEDOUT", 111: "ECONNREFUSED", 112: "EHOSTDOWN", 113: "EHOSTUNREACH", 114: "EALREADY",
        115: "EINPROGRESS", 116: "ESTALE", 117: "EUCLEAN", 118: "ENOTNAM", 119: "ENAVAIL", 120: "EISNAM",
        121: "EREMOTEIO", 122: "EDQUOT", 123: "ENOMEDIUM", 124: "EMEDIUMTYPE", 125: "ECANCELED", 126: "ENOKEY",
        127: "EKEYEXPIRED", 128: "EKEYREVOKED", 129: "EKEYREJECTED", 130: "EOWNERDEAD", 131: "ENOTRECOVERABLE",
        132: "ERFKILL", 133: "EHWPOISON", 134: "EFTYPE", 512: "ERESTARTSYS", 513: "ERESTARTNOINTR",
        514: "ERESTARTNOHAND", 515: "ENOIOCTLCMD", 516: "ERESTART_RESTARTBLOCK", 517: "EPROBE_DEFER",
        518: "EOPENSTALE", 519: "ENOPARAM", 521: "EBADHANDLE", 522: "ENOTSYNC", 523: "EBADCOOKIE", 524: "ENOTSUPP",
        525: "ETOOSMALL", 526: "ESERVERFAULT", 527: "EBADTYPE", 528: "EJUKEBOX", 529: "EIOCBQUEUED",
        530: "ERECALLCONFLICT", 531: "ENOGRACE",
    ]
    static let messages: [CInt: String] = [
        1: "Operation not permitted", 2: "No such file or directory", 3: "No such process",
        4: "Interrupted system call", 5: "Input/output error", 6: "No such device or address",
        7: "Argument list too long", 8: "Exec format error", 9: "Bad file descriptor", 10: "No child processes",
        11: "Resource temporarily unavailable", 12: "Cannot allocate memory", 13: "Permission denied",
        14: "Bad address", 15: "Block device required", 16: "Device or resource busy", 17: "File exists",
        18: "Invalid cross-device link", 19: "No such device", 20: "Not a directory", 21: "Is a directory",
        22: "Invalid argument", 23: "Too many open files in system", 24: "Too many open files",
        25: "Inappropriate ioctl for device", 26: "Text file busy", 27: "File too large",
        28: "No space left on device", 29: "Illegal seek", 30: "Read-only file system", 31: "Too many links",
        32: "Broken pipe", 33: "Numerical argument out of domain", 34: "Numerical result out of range",
        35: "Resource deadlock avoided", 36: "File name too long", 37: "No locks available",
        38: "Function not implemented", 39: "Directory not empty", 40: "Too many levels of symbolic links",
        42: "No message of desired type", 43: "Identifier removed", 44: "Channel number out of range",
        45: "Level 2 not synchronized", 46: "Level 3 halted", 47: "Level 3 reset", 48: "Link number out of range",
        49: "Protocol driver not attached", 50: "No CSI structure available", 51: "Level 2 halted",
        52: "Invalid exchange", 53: "Invalid request descriptor", 54: "Exchange full", 55: "No anode",
        56: "Invalid request code", 57: "Invalid slot", 59: "Bad font file format", 60: "Device not a stream",
        61: "No data available", 62: "Timer expired", 63: "Out of streams resources",
        64: "Machine is not on the network", 65: "Package not installed", 66: "Object is remote",
        67: "Link has been severed", 68: "Advertise error", 69: "Srmount error", 70: "Communication error on send",
        71: "Protocol error", 72: "Multihop attempted", 73: "RFS specific error", 74: "Bad message",
        75: "Value too large for defined data type", 76: "Name not unique on network",
        77: "File descriptor in bad state", 78: "Remote address changed",
        79: "Can not access a needed shared library", 80: "Accessing a corrupted shared library",
        81: ".lib section in a.out corrupted", 82: "Attempting to link in too many shared libraries",
        83: "Cannot exec a shared library directly", 84: "Invalid or incomplete multibyte or wide character",
        85: "Interrupted system call should be restarted", 86: "Streams pipe error", 87: "Too many users",
        88: "Socket operation on non-socket", 89: "Destination address required", 90: "Message too long",
        91: "Protocol wrong type for socket", 92: "Protocol not available", 93: "Protocol not supported",
        94: "Socket type not supported", 95: "Operation not supported", 96: "Protocol family not supported",
        97: "Address family not supported by protocol", 98: "Address already in use",
        99: "Cannot assign requested address", 100: "Network is down", 101: "Network is unreachable",
        102: "Network dropped connection on reset", 103: "Software caused connection abort",
        104: "Connection reset by peer", 105: "No buffer space available",
        106: "Transport endpoint is already connected", 107: "Transport endpoint is not connected",
        108: "Cannot send after transport endpoint shutdown", 109: "Too many references: cannot splice",
        110: "Connection timed out", 111: "Connection refused", 112: "Host is down", 113: "No route to host",
        114: "Operation already in progress", 115: "Operation now in progress", 116: "Stale file handle",
        117: "Structure needs cleaning", 118: "Not a XENIX named type file", 119: "No XENIX semaphores available",
        120: "Is a named type file", 121: "Remote I/O error", 122: "Disk quota exceeded", 123: "No medium found",
        124: "Wrong medium type", 125: "Operation canceled", 126: "Required key not available",
        127: "Key has expired", 128: "Key has been revoked", 129: "Key was rejected by service", 130: "Owner died",
        131: "State not recoverable", 132: "Operation not possible due to RF-kill",
        133: "Memory page has hardware error", 134: "Wrong file type for the intended operation",
        512: "kernel-internal", 513: "kernel-internal", 514: "restart if no handler.. (kernel-internal)",
        515: "No ioctl command (kernel-internal)", 516: "restart by calling sys_restart_syscall (kernel-internal)",
        517: "Driver requests probe retry (kernel-internal)", 518: "open found a stale dentry (kernel-internal)",
        519: "Parameter not supported (kernel-internal)", 521: "Illegal NFS file handle (kernel-internal)",
        522: "Update synchronization mismatch (kernel-internal)", 523: "Cookie is stale (kernel-internal)",
        524: "Operation is not supported (kernel-internal)", 525: "Buffer or request is too small (kernel-internal)",
        526: "An untranslatable error occurred (kernel-internal)",
        527: "Type not supported by server (kernel-internal)",
        528: "Request initiated, but will not complete before timeout (kernel-internal)",
        529: "iocb queued, will get completion event (kernel-internal)",
        530: "conflict with recalled state (kernel-internal)",
        531: "NFS file lock reclaim refused (kernel-internal)",
    ]
}
