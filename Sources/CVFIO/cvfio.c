/*
 * CVFIO is header-only (types, typed constants, static inline helpers); SwiftPM
 * needs one C source per C target. Compiling the umbrella here also checks that
 * the headers build as plain C with the package's flags.
 */
#include "CVFIO.h"
