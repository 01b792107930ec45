/* version.c — see version.h. The Makefile passes LG_GIT_COMMIT to this file alone. */
#include "core/version.h"

#ifndef LG_GIT_COMMIT
#define LG_GIT_COMMIT "unknown"
#endif

const char *lg_git_commit(void) { return LG_GIT_COMMIT; }
