// VFIOKit, the library product: the layers, re-exported, so `import VFIOKit` is all
// a user writes. What needs the host side and the kernel objects together (the
// BDF-based openers, ownership and viability added to object errors, the doctor
// with its kernel probes) lives in this target, where both meet.
@_exported import VFIOSystem
@_exported import VFIOObjects
@_exported import VFIODMA
@_exported import VFIOHost
