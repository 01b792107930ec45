/* testutil.h — helpers shared by the cmocka tests. */
#ifndef LG_TESTUTIL_H
#define LG_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of a file under ../shared/data (relative to the repo root, where tests run), or
 * NULL if ../shared/data is absent. Caller frees. */
char *lg_test_shared(const char *rel);
/* cmocka skip with a clear line on stdout when shared data is missing. */
#define LG_REQUIRE_SHARED(var, rel)                                                            \
    char *var = lg_test_shared(rel);                                                           \
    if (!var) {                                                                                \
        print_message("skipped: ../shared/data/%s not found\n", rel);                          \
        skip();                                                                                \
    }
/* A fresh empty temporary directory (mkdtemp under /tmp); caller frees the string. */
char *lg_test_tmpdir(void);
/* Run a shell command, capture stdout (up to cap-1 bytes) and return its exit status. */
int lg_test_run(const char *cmd, char *out, size_t cap);
/* Path of the built CLI (LORAGA_BIN or build/loraga). */
const char *lg_test_bin(void);

#endif
