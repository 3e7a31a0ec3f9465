// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "VFIOKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "VFIOKit", targets: ["VFIOKit"]),
        .executable(name: "vfioctl", targets: ["vfioctl"]),
        // The worked example: a userspace NVMe driver on VFIOKit, and its tool.
        .library(name: "NVMeDriver", targets: ["NVMeDriver"]),
        .executable(name: "vfio-nvme", targets: ["vfio-nvme"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        // `swift package generate-documentation` (Scripts/docs.sh): the DocC catalog in Sources/VFIOKit.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // The kernel's VFIO and iommufd uapi (Linux 7.2), written by us, no system headers needed.
        .target(name: "CVFIO"),
        // The layers of the library, each its own target so the compiler rejects a wrong
        // arrow (README, "Layers"; Scripts/check-layers.sh checks the graph):
        // syscalls, errors, fd ownership and vocabulary: the only way to the kernel.
        .target(
            name: "VFIOSystem",
            dependencies: ["CVFIO", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        // The kernel's objects: iommufd (IOAS, HWPT, ...) and VFIO (container, group, device, ...).
        .target(
            name: "VFIOObjects",
            dependencies: ["VFIOSystem", "CVFIO", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        // DMA memory, mappings, the IOVA allocator and the five-mode DMA space.
        .target(
            name: "VFIODMA",
            dependencies: ["VFIOObjects", "VFIOSystem", "CVFIO", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        // The host side: sysfs/procfs discovery, groups, viability, holders, binding, doctor's checks.
        .target(
            name: "VFIOHost",
            dependencies: ["VFIOSystem", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        // The one library product: re-exports the layers and adds what needs host and objects together.
        .target(
            name: "VFIOKit",
            dependencies: ["VFIOSystem", "VFIOObjects", "VFIODMA", "VFIOHost",
                           .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        // The iommufd selftest ABI (IOMMU_TEST_CMD), for mock-domain tests only.
        .target(name: "CIOMMUFDTest", dependencies: ["CVFIO"]),
        // Test support: the fake kernel for unit tests and the mock-domain driver for
        // guest tests. Not part of the library product.
        .target(
            name: "VFIOKitTestSupport",
            dependencies: ["VFIOKit", "VFIOSystem", "VFIOObjects", "CVFIO", "CIOMMUFDTest"],
            swiftSettings: strict
        ),
        // vfioctl's commands live in a library so tests can drive them.
        .target(
            name: "VFIOCommands",
            dependencies: ["VFIOKit", "VFIOSystem", "CVFIO", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict
        ),
        .executableTarget(name: "vfioctl", dependencies: ["VFIOCommands"], swiftSettings: strict),
        // Test helper: adopts the fds `vfioctl attach --exec` passes and runs an edu DMA round trip.
        .executableTarget(
                        name: "vfiokit-edu-dma", dependencies: ["VFIOKit", "VFIOSystem", "VFIOKitTestSupport"], swiftSettings: strict),
        // The NVMe driver (Examples/NVMeDriver): VFIOKit's public product only.
        .target(name: "NVMeDriver", dependencies: ["VFIOKit"], path: "Examples/NVMeDriver/Sources/NVMeDriver",
                swiftSettings: strict),
        .executableTarget(
            name: "vfio-nvme",
            dependencies: ["NVMeDriver", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/NVMeDriver/Sources/vfio-nvme",
            swiftSettings: strict
        ),
        // The driver's tests: host unit tests, and guest suites that skip outside the test guest.
        .testTarget(
            name: "NVMeDriverTests",
            dependencies: ["NVMeDriver", "VFIOKit", "VFIOKitTestSupport", "CVFIO"],
            path: "Examples/NVMeDriver/Tests/NVMeDriverTests",
            swiftSettings: strict
        ),
        // Benchmarks: VFIOKit's hot paths against raw C in the test guest.
        .target(name: "CBenchSupport", dependencies: ["CVFIO"], path: "Benchmarks/CBenchSupport"),
        .executableTarget(
            name: "vfiokit-bench",
            dependencies: ["VFIOKit", "VFIOKitTestSupport", "CBenchSupport", "CVFIO", "NVMeDriver"],
            path: "Benchmarks/vfiokit-bench",
            swiftSettings: strict
        ),
        // Counts the host tests' allocations per thread (interposes malloc in the test bundle).
        .target(name: "CAllocationCount", path: "Tests/CAllocationCount"),
        .testTarget(
            name: "VFIOKitTests",
            dependencies: ["VFIOKit", "VFIOSystem", "VFIOObjects", "VFIODMA", "VFIOHost", "VFIOKitTestSupport",
                           "VFIOCommands", "CVFIO", "CAllocationCount"],
            swiftSettings: strict
        ),
        // Runs only where /dev/iommu and the edu device exist (the test guest); skips elsewhere.
        .testTarget(
            name: "VFIOKitGuestTests",
            dependencies: ["VFIOKit", "VFIOSystem", "VFIOObjects", "VFIODMA", "VFIOHost", "VFIOKitTestSupport",
                           "VFIOCommands", "CVFIO", "CIOMMUFDTest"],
            swiftSettings: strict
        ),
    ]
)

// libFuzzer targets for the parsers of outside input (Fuzz/README.md; Scripts/fuzz.sh builds
// them with VFIOKIT_FUZZ=1 and --sanitize=fuzzer into .build/fuzz). Not part of the package
// otherwise, so the normal build never compiles them. One binary; VFIOKIT_FUZZ_TARGET picks
// the parser. -parse-as-library: libFuzzer's runtime brings main().
if Context.environment["VFIOKIT_FUZZ"] == "1" {
    package.targets.append(.executableTarget(
        name: "vfiokit-fuzz",
        dependencies: ["VFIOKit", "VFIOSystem", "VFIOObjects", "VFIOHost", "VFIOCommands", "VFIOKitTestSupport", "CVFIO"],
        path: "Fuzz/Sources/vfiokit-fuzz",
        swiftSettings: strict + [.unsafeFlags(["-parse-as-library"])]
    ))
}
