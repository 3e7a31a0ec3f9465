// Placeholder until the command tree lands; see VFIOCtl.swift.
enum VFIOCommandsPlaceholder {}
