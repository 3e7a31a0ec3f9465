/* CIOMMUFDTest is header-only; SwiftPM needs one C source per C target. */
#include "CIOMMUFDTest.h"
