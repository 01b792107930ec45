/* version.h — what `loraga --version` prints and run.json records. */
#ifndef LG_VERSION_H
#define LG_VERSION_H

#define LG_VERSION "0.1.0"

/* The git commit the library was built from (`git describe --always --dirty`), "unknown" when
 * it was built outside a git checkout. */
const char *lg_git_commit(void);

#endif
