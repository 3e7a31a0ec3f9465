extension VFIOError {
    /// What failed, as a value code can match:
    ///
    /// ```swift
    /// catch let e where e.operation == .ioctl(.iommuIOASMap) && e.errno == .noMemory { ... }
    /// ```
    ///
    /// An ioctl names its request from the one table (``Request``), a syscall its
    /// call (``Syscall``), and a step VFIOKit takes itself (a bind, parsing an
    /// address, a check it makes before asking the kernel) its ``Step``.
    /// `description` is the name people read: `IOMMU_IOAS_MAP`, `open`, `bind`.
    public enum Operation: Sendable, Hashable, CustomStringConvertible {
        /// An ioctl, by its request (`.ioctl(.iommuIOASMap)`).
        case ioctl(Request)
        /// A system call or C library call (`.syscall(.open)`).
        case syscall(Syscall)
        /// A step of VFIOKit's own, made before or without asking the kernel (`.step(.bind)`).
        case step(Step)

        public var description: String {
            switch self {
            case .ioctl(let r): r.name
            case .syscall(let s): s.rawValue
            case .step(let s): s.rawValue
            }
        }

        /// The request, for an ioctl.
        public var request: Request? {
            if case .ioctl(let r) = self { return r }
            return nil
        }
    }
}

extension VFIOError.Operation: Codable {
    enum CodingKeys: String, CodingKey { case kind, name }

    /// `{"kind": "ioctl" | "syscall" | "step", "name": "IOMMU_IOAS_MAP"}`.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .ioctl(let r): try c.encode("ioctl", forKey: .kind)
            try c.encode(r.name, forKey: .name)
        case .syscall(let s): try c.encode("syscall", forKey: .kind)
            try c.encode(s.rawValue, forKey: .name)
        case .step(let s): try c.encode("step", forKey: .kind)
            try c.encode(s.rawValue, forKey: .name)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try c.decode(String.self, forKey: .name)
        switch try c.decode(String.self, forKey: .kind) {
        case "ioctl":
            guard let r = Request.named(name) else {
                throw DecodingError.dataCorruptedError(forKey: .name, in: c, debugDescription: "no request \(name)")
            }
            self = .ioctl(r)
        case "syscall":
            guard let s = Syscall(rawValue: name) else {
                throw DecodingError.dataCorruptedError(forKey: .name, in: c, debugDescription: "no syscall \(name)")
            }
            self = .syscall(s)
        default:
            self = .step(VFIOError.Step(rawValue: name))
        }
    }
}

/// A system call (or C library call) VFIOKit makes through its syscall layer,
/// by the name errors print.
public enum Syscall: String, Sendable, Hashable, CaseIterable, Codable {
    /// `open(2)`.
    case open
    /// `close(2)`.
    case close
    /// `read(2)`.
    case read
    /// `write(2)`.
    case write
    /// `pread(2)`.
    case pread
    /// `pwrite(2)`.
    case pwrite
    /// `poll(2)`.
    case poll
    /// `mmap(2)`.
    case mmap
    /// `munmap(2)`.
    case munmap
    /// `eventfd(2)`.
    case eventfd
    /// `memfd_create(2)`.
    case memfdCreate = "memfd_create"
    /// `ftruncate(2)`.
    case ftruncate
    /// `fsync(2)`.
    case fsync
    /// `flock(2)`.
    case flock
    /// `fcntl(2)`.
    case fcntl
    /// `fstat(2)`.
    case fstat
    /// `stat(2)`.
    case stat
    /// `lstat(2)`.
    case lstat
    /// `readlink(2)`.
    case readlink
    /// `access(2)`.
    case access
    /// `mkdir(2)`.
    case mkdir
    /// `unlink(2)`.
    case unlink
    /// `rename(2)`.
    case rename
    /// `getdents64(2)`.
    case getdents64
    /// `pthread_create(3)`.
    case pthreadCreate = "pthread_create"
    /// `getrlimit(2)`.
    case getrlimit
    /// `uname(2)`.
    case uname
    /// `sysconf(3)`.
    case sysconf
    /// `posix_spawnp(3)`.
    case posixSpawnp = "posix_spawnp"
    /// `waitpid(2)`.
    case waitpid
    /// `kill(2)`.
    case kill
    /// `pthread_sigmask(3)`.
    case pthreadSigmask = "pthread_sigmask"
    /// `sigtimedwait(2)`.
    case sigtimedwait
}

extension VFIOError {
    /// A step VFIOKit takes itself, named in words (`bind`, `parse PCI address`).
    ///
    /// The library's steps are the static members; code built on VFIOKit (a
    /// CLI, a driver) names its own with a string literal (`"map BAR0"`).
    public struct Step: RawRepresentable, Sendable, Hashable, Codable, ExpressibleByStringInterpolation,
        CustomStringConvertible
    {
        /// The step's name, as errors print it.
        public var rawValue: String
        /// A step named `rawValue`.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// A step named by a literal: `"map BAR0"`.
        public init(stringLiteral value: String) { rawValue = value }
        /// A step named by an interpolated string.
        public init(stringInterpolation: DefaultStringInterpolation) { rawValue = String(stringInterpolation: stringInterpolation) }
        public var description: String { rawValue }

        public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            try c.encode(rawValue)
        }

        // The fd owner and waits.
        /// A use of a closed fd (``OwnedFD/withDescriptor(_:_:)``'s default).
        public static let useFD: Step = "use fd"
        /// Waiting on an eventfd (``EventFD/wait(timeout:)-6sc0d``) that was closed.
        public static let waitForEventFD: Step = "wait for eventfd"
        /// Waiting for I/O page faults on a fault queue.
        public static let waitForPageFaults: Step = "wait for page faults"
        /// Waiting for events on a vIOMMU event queue.
        public static let waitForVEvents: Step = "wait for vEVENTs"
        // Addresses and sysfs.
        /// Parsing a PCI address (`0000:00:03.0`).
        public static let parsePCIAddress: Step = "parse PCI address"
        /// Finding a device in `/sys/bus/pci/devices`.
        public static let findPCIDevice: Step = "find PCI device"
        /// Reading a device's sysfs attributes.
        public static let readPCIDevice: Step = "read PCI device"
        /// Finding a device's IOMMU group (its `iommu_group` link).
        public static let findIOMMUGroup: Step = "find IOMMU group"
        /// Finding a device's VFIO cdev (`vfio-dev/vfioN` in sysfs).
        public static let findVFIOCdev: Step = "find VFIO cdev"
        // Binding and its records.
        /// Binding a device to a driver (`driver_override`, `drivers_probe`).
        public static let bind: Step = "bind"
        /// Unbinding a device from its driver.
        public static let unbind: Step = "unbind"
        /// Giving a device its original driver back (`unbind --restore`).
        public static let restoreDriver: Step = "unbind --restore"
        /// Putting a device back as it was after a failed bind.
        public static let putBack: Step = "put back"
        /// Writing a device's `driver_override`.
        public static let setDriverOverride: Step = "set driver_override"
        /// Opening the binding records' directory (`/run/vfiokit`).
        public static let openStateDirectory: Step = "open state directory"
        /// Checking the binding records' directory (owner, mode).
        public static let useStateDirectory: Step = "use state directory"
        /// Reading a binding record (a device's original driver).
        public static let readBindingRecord: Step = "read binding record"
        /// Writing a binding record.
        public static let writeBindingRecord: Step = "write binding record"
        // Objects and DMA.
        /// Opening an IOMMU group for VFIO (a check VFIOKit makes: members, viability).
        public static let openGroup: Step = "open group"
        /// Adding a group to a `DMASpace`'s container.
        public static let addGroup: Step = "add group"
        /// Putting a device in a `DMASpace`.
        public static let attachDevice: Step = "attach device"
        /// Choosing a `DMAMode` (none available).
        public static let chooseDMAMode: Step = "choose DMA mode"
        /// Allocating a `DMABuffer`.
        public static let allocateDMABuffer: Step = "allocate DMA buffer"
        /// Mapping in a `DMASpace` (IOVA in use, outside the ranges or the mask).
        public static let mapDMA: Step = "map DMA"
        /// The `IOVAAllocator` (an alignment that is not a power of two).
        public static let allocateIOVA: Step = "IOVA allocator"
        /// `DMAMapping.range` of a mapping that ends at 2^64.
        public static let mappingRange: Step = "DMAMapping.range"
        /// `DMAMapping.iova(at:)` with an offset outside the mapping.
        public static let mappingIOVA: Step = "DMAMapping.iova(at:)"
        /// Asking whether the IOMMU enforces cache coherency (`VFIO_DMA_CC_IOMMU`).
        public static let probeCacheCoherency: Step = "probe cache coherency"
    }
}
