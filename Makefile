# loraga — build with `make`, test with `make test`, run the demo with `make demo`.
# Plain GNU make: every src/**/*.c goes into build/libloraga.a, src/cli/*.c into build/loraga,
# each tests/test_*.c becomes a cmocka binary built with ASan+UBSan and run by ctest.

CC       ?= gcc
ARCH     ?= -march=native
OPT      ?= -O3
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp
WARN     := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes
CPPFLAGS := -Iinclude -Isrc -I$(BLAS_INC) -D_GNU_SOURCE
CFLAGS   := -std=c11 $(OPT) $(ARCH) -g $(WARN) -fopenmp
# OpenMP build of OpenBLAS: one thread pool shared with our own OpenMP loops.
LDLIBS   := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -llapacke -lcjson -lpcre2-8 -lm -fopenmp

SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRC  := $(shell find src -name '*.c' ! -path 'src/cli/*' | sort)
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_SUP := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))

LIB_OBJ  := $(LIB_SRC:%.c=build/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=build/obj/%.o)
SLIB_OBJ := $(LIB_SRC:%.c=build/san/%.o)
SCLI_OBJ := $(filter-out build/san/src/cli/main.o,$(CLI_SRC:%.c=build/san/%.o))
TEST_BIN := $(TEST_SRC:tests/%.c=build/tests/%)

.PHONY: all deps test demo clean bench
all: deps-check build/loraga

deps-check:
	@scripts/install-deps.sh --check-or-install

build/libloraga.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

build/loraga: $(CLI_OBJ) build/libloraga.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) build/libloraga.a $(LDLIBS)

build/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# Sanitised objects for the tests (same sources, -O1 for useful stacks).
build/san/%.o: %.c
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
	  OMP_NUM_THREADS=2 LORAGA_BIN="$(CURDIR)/build/loraga" ctest --output-on-failure

demo: deps-check build/loraga
	@scripts/demo.sh

bench: build/loraga

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(SLIB_OBJ:.o=.d)
