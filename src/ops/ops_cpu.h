/* ops_cpu.h — private knobs of the CPU backend, for tests of its internals. */
#ifndef LG_OPS_CPU_H
#define LG_OPS_CPU_H

#include "ops/ops.h"

/* Floats of a bf16 (or bf16-rounded) weight expanded at a time: tests lower it to force several
 * row blocks, the last one partial. */
void lg_ops_cpu_set_wblock(lg_ops *o, long floats);

#endif
