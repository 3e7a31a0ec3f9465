import VFIOCommands

VFIOCtl.main()
