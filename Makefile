# loraga — build with `make`, test with `make test`, run the demo with `make demo`.
# Plain GNU make: every src/**/*.c goes into build/libloraga.a, src/cli/*.c into build/loraga,
# each tests/test_*.c becomes a cmocka binary built with ASan+UBSan and run by ctest.
# The tests run with LORAGA_PRECISION=fp32 (the reference comparisons are float32 on every CPU);
# the bf16 tests ask for --precision bf16 themselves.

CC       ?= gcc
ARCH     ?= -march=native
OPT      ?= -O3
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp
WARN     := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes
CPPFLAGS := -Iinclude -Isrc -I$(BLAS_INC) -D_GNU_SOURCE
CFLAGS   := -std=c11 $(OPT) $(ARCH) -g $(WARN) -fopenmp
# OpenMP build of OpenBLAS: one thread pool shared with our own OpenMP loops.
LDLIBS   := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -llapacke -ldnnl -lcjson -lpcre2-8 -lyaml -lm -fopenmp

SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# MPI (optional; docs/mpi.md). LORAGA_MPI=1 requires it, 0 builds without, auto (default) uses it
# when mpicc is on PATH. Deferred (=) so that the check runs after deps-check has installed
# OpenMPI. Only src/dist/dist.c sees MPI, and only in the CLI build: the sanitised test objects
# always get the single-process stand-in (OpenMPI's internals would flood ASan's leak reports);
# the MPI tests drive build/loraga under mpirun instead.
LORAGA_MPI ?= auto
MPI_ON      = $(if $(filter 1,$(LORAGA_MPI)),1,$(if $(filter auto,$(LORAGA_MPI)),$(if $(shell command -v mpicc 2>/dev/null),1,0),0))
MPI_CFLAGS ?= $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS   ?= $(shell mpicc --showme:link 2>/dev/null)
MPI_CPP     = $(if $(filter 1,$(MPI_ON)),-DLG_HAVE_MPI $(MPI_CFLAGS))
MPI_LD      = $(if $(filter 1,$(MPI_ON)),$(MPI_LIBS))

LIB_SRC  := $(shell find src -name '*.c' ! -path 'src/cli/*' | sort)
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_SUP := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))

LIB_OBJ  := $(LIB_SRC:%.c=build/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=build/obj/%.o)
SLIB_OBJ := $(LIB_SRC:%.c=build/san/%.o)
SCLI_OBJ := $(filter-out build/san/src/cli/main.o,$(CLI_SRC:%.c=build/san/%.o))
TEST_BIN := $(TEST_SRC:tests/%.c=build/tests/%)

.PHONY: all deps deps-check test demo clean bench FORCE
all: deps-check build/loraga

deps-check:
	@scripts/install-deps.sh --check-or-install

build/libloraga.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

build/loraga: $(CLI_OBJ) build/libloraga.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) build/libloraga.a $(LDLIBS) $(MPI_LD)

# Order-only: compilation waits for the dependency check (which may install the headers) without
# being rebuilt by it, so `make -jN` on a fresh machine does not race the install.
build/obj/%.o: %.c | deps-check
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# dist.o is rebuilt whenever the MPI setting changes (the stamp is rewritten only then).
build/obj/src/dist/dist.o: src/dist/dist.c build/mpi.stamp
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(MPI_CPP) $(CFLAGS) -MMD -MP -c $< -o $@

build/mpi.stamp: FORCE | deps-check
	@mkdir -p $(@D)
	@if [ "$(LORAGA_MPI)" = 1 ] && ! command -v mpicc >/dev/null; then \
	  echo "LORAGA_MPI=1 but mpicc is not installed (apt-get install libopenmpi-dev openmpi-bin)" >&2; exit 1; fi
	@echo "MPI=$(MPI_ON) $(MPI_CPP) $(MPI_LD)" | cmp -s - $@ || echo "MPI=$(MPI_ON) $(MPI_CPP) $(MPI_LD)" > $@

# `loraga --version` and run.json name the commit the binary was built from; version.o is rebuilt
# only when that changes (the stamp is rewritten only then).
GIT_COMMIT := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
build/version.stamp: FORCE
	@mkdir -p $(@D)
	@echo '$(GIT_COMMIT)' | cmp -s - $@ || echo '$(GIT_COMMIT)' > $@
build/obj/src/core/version.o build/san/src/core/version.o: build/version.stamp
build/obj/src/core/version.o build/san/src/core/version.o: CPPFLAGS += -DLG_GIT_COMMIT='"$(GIT_COMMIT)"'

# Sanitised objects for the tests (same sources, -O1 for useful stacks).
build/san/%.o: %.c | deps-check
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -std=c11 -O1 -g $(ARCH) $(WARN) -fopenmp $(SAN) -MMD -MP -c $< -o $@

build/san/libloraga.a: $(SLIB_OBJ) $(SCLI_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

build/tests/%: tests/%.c $(TEST_SUP) build/san/libloraga.a
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Itests -std=c11 -O1 -g $(ARCH) $(WARN) -fopenmp $(SAN) -o $@ $< $(TEST_SUP) build/san/libloraga.a $(LDLIBS) -lcmocka

build/tests/CTestTestfile.cmake: Makefile $(TEST_SRC)
	@mkdir -p $(@D)
	@{ for t in $(TEST_BIN:build/tests/%=%); do \
	  echo "add_test($$t \"$(CURDIR)/build/tests/$$t\")"; \
	  echo "set_tests_properties($$t PROPERTIES WORKING_DIRECTORY \"$(CURDIR)\" SKIP_RETURN_CODE 77 TIMEOUT 900)"; \
	done; } > $@

test: deps-check build/loraga $(TEST_BIN) build/tests/CTestTestfile.cmake
	@cd build/tests && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  OMP_NUM_THREADS=2 LORAGA_BIN="$(CURDIR)/build/loraga" LORAGA_PRECISION=fp32 ctest --output-on-failure

# The demo builds (deps-check + all) itself, so that its report times every phase; README.md.
# make demo DEMO_ARGS="--quick" (seconds), DEMO_ARGS="--out DIR --steps N --threads N".
demo:
	@MAKE="$(MAKE)" scripts/demo.sh $(DEMO_ARGS)

bench: build/loraga

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(SLIB_OBJ:.o=.d)
