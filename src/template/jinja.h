/* jinja.h — a Jinja2 interpreter for chat templates, configured as Hugging Face transformers
 * configures jinja2 for apply_chat_template: ImmutableSandboxedEnvironment(trim_blocks=True,
 * lstrip_blocks=True, extensions=[AssistantTracker ({% generation %}), loopcontrols]), the
 * tojson filter replaced by json.dumps(x, ensure_ascii=False, indent=, separators=, sort_keys=),
 * globals raise_exception, strftime_now, dict, namespace (plus Jinja's range).
 *
 * Covered: {{ }}, {% %}, {# #} with -/+ whitespace control, trim_blocks/lstrip_blocks exactly as
 * jinja2's lexer does them; raw; if/elif/else; for (tuple targets, `if` filter, else, loop.index,
 * index0, revindex, revindex0, first, last, length, previtem, nextitem, cycle), break/continue;
 * set (names, tuples, namespace attributes, block set); macros (positional/keyword arguments,
 * defaults); filter blocks; generation blocks. Expressions: literals (str, int, float, bool, none,
 * list, tuple, dict), attribute/item access, slices, calls, filters, tests, arithmetic (+ - * / //
 * % **), ~, comparisons and chains, in / not in, and/or/not, conditional expressions.
 * Filters: abs, attr, batch, capitalize, center, count, d/default, dictsort, e/escape, first,
 * float, format, indent, int, items, join, last, length, list, lower, map, max, min, reject,
 * rejectattr, replace, reverse, round, safe, select, selectattr, sort, string, sum, title, tojson,
 * trim, truncate, unique, upper, wordcount. Tests: boolean, callable, defined, divisibleby, eq,
 * equalto, escaped, even, false, filter, float, ge, gt, in, integer, iterable, le, lower, lt,
 * mapping, ne, none, number, odd, sameas, sequence, string, test, true, undefined, upper.
 * str/dict methods: strip, lstrip, rstrip, split, rsplit, splitlines, startswith, endswith, upper,
 * lower, title, capitalize, replace, find, rfind, index, count, join, format (positional {}),
 * removeprefix, removesuffix, isdigit, isalpha, isspace...; items, keys, values, get.
 * Values print as Python prints them (True, None, ['a', 1], {'k': 'v'}, 1.0).
 *
 * Anything else is an error naming the construct and its line/column: a template the interpreter
 * cannot run is refused, never rendered approximately. Errors raised by the template
 * (raise_exception) are errors too, with its message. Strings are UTF-8; lengths, indexing and
 * slicing count code points as Python does. Known gaps: upper/lower/title/capitalize change
 * ASCII letters only; JSON numbers that are integral print as ints ("1.0" in the data prints 1). */
#ifndef LG_JINJA_H
#define LG_JINJA_H

#include <cjson/cJSON.h>
#include <stddef.h>

typedef struct lg_jinja lg_jinja;

/* Parse a template (len bytes, need not be NUL-terminated). name prefixes error messages.
 * 0, or -1 with lg_last_error() = "NAME:LINE:COL: problem". */
int lg_jinja_parse(const char *src, size_t len, const char *name, lg_jinja **out);
void lg_jinja_free(lg_jinja *t);
/* 1 if the template has {% generation %} blocks. */
int lg_jinja_has_generation(const lg_jinja *t);

typedef struct {
    size_t a, b; /* byte range of the output */
} lg_jinja_span;

/* Render with the variables of a JSON object (NULL = none). *out is malloc'd and NUL-terminated,
 * *len its length (may be NULL). gen/ngen (may be NULL): the byte ranges written inside
 * {% generation %} blocks, malloc'd. 0, or -1 with a message. */
int lg_jinja_render(const lg_jinja *t, const cJSON *vars, char **out, size_t *len, lg_jinja_span **gen, int *ngen);

#endif
