/* dist.h — data parallelism over MPI (OpenMPI), and the single-process stand-in without it.
 *
 * Model: P ranks each hold the whole model and the whole data set; every rank fills each GLOBAL
 * batch itself (the batch source is deterministic) and computes on its share of the rows.
 * Gradients, LoRA-GA's G / sketches and loss sums are summed with an all-reduce; every rank then
 * takes the same optimizer step. Rank 0 alone writes files and logs.
 *
 * Built with -DLG_HAVE_MPI (the Makefile does this when mpicc is found) the functions use MPI,
 * but only when the process was started by an MPI launcher (mpirun, srun): a plain `loraga
 * train` never initialises MPI. Built without it, everything is a size-1 stub and lg_dist_init
 * refuses to run as one of several ranks.
 *
 * Errors: an MPI call that fails aborts the whole job with a message (MPI_ERRORS_RETURN, then
 * MPI_Abort): a collective that failed on one rank leaves the others out of step, so there is
 * nothing to recover. Callers that fail on one rank must call lg_dist_abort, never just return:
 * the other ranks would wait in their next collective forever. */
#ifndef LG_DIST_H
#define LG_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "data/batch.h"
#include "train/train.h"

/* Starts MPI when launched by mpirun/srun (idempotent). Returns 0, or -1 with a message (a
 * build without MPI asked to be one of several ranks). LORAGA_MPI_TIMEOUT=S in the environment
 * ends the job when one collective waits longer than S seconds (a rank stuck, not dead: mpirun
 * already ends the job when a rank dies). */
int lg_dist_init(int *argc, char ***argv);
void lg_dist_finalize(void);
int lg_dist_rank(void);
int lg_dist_size(void);
int lg_dist_have_mpi(void);       /* built with MPI */
const char *lg_dist_info(void);   /* "MPI (Open MPI v4.1.4...)" or "built without MPI" */

/* In place, across all ranks; no-ops when size is 1. Failures abort the job. */
void lg_dist_allreduce_sum(float *x, size_t n);
void lg_dist_allreduce_sum_f64(double *x, size_t n);
void lg_dist_bcast(void *buf, size_t bytes, int root);
void lg_dist_barrier(void);
/* Prints "loraga: rank R of P: msg; stopping all ranks" and ends every rank (exit 1). */
_Noreturn void lg_dist_abort(const char *msg);
/* Ranks > 0 send their stderr to /dev/null (unless LORAGA_MPI_VERBOSE=1): they would print the
 * same progress as rank 0. Their errors still show: lg_dist_abort writes to the original. */
void lg_dist_quiet_others(void);
/* Bytes handed to all-reduce since start (payload, per rank): the communication volume. */
uint64_t lg_dist_bytes_reduced(void);
/* Seconds spent in collectives since start (transfer plus waiting for the slowest rank). */
double lg_dist_seconds(void);

/* ---- data parallelism helpers ------------------------------------------------------------- */

/* This rank's rows of a global batch of B rows: B/P each, the first B%P ranks one more. */
void lg_dist_rows(int B, int *first, int *count);
/* A view (no copy) of this rank's rows of `global`; returns the global batch's weight sum,
 * i.e. the mean-loss denominator of the whole batch, the same on every rank without
 * communication because every rank filled the whole batch. */
double lg_dist_shard(const lg_batch *global, lg_batch *local);
/* Sums the gradients of t across ranks (packed into few large all-reduces). */
void lg_dist_allreduce_grads(lg_opt_tensor *t, int n);
/* Checks that every rank holds bitwise the same values of t (a hash compared with rank 0's):
 * returns 0, or -1 with a message on every rank. */
int lg_dist_check_same(const lg_opt_tensor *t, int n);
/* A private scratch directory for a rank that writes no outputs (removed by lg_outdir_abort). */
char *lg_dist_scratch_dir(void);

#endif
