/* json.h — strict JSON reading on top of cJSON, for every file and row loraga takes from a user.
 *
 * cJSON alone accepts two things that silently change what a file says: a "\u0000" escape (or a
 * raw NUL byte) inside a string, which cuts the C string there, and an object that repeats a key,
 * of which cJSON's lookups see the first value where Python's json and Hugging Face see the last.
 * lg_json_parse refuses both, and anything but white space after the value. */
#ifndef LG_JSON_H
#define LG_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Parse text[0, len) as one JSON value. NULL on error, with the reason in lg_last_error() and
 * no file name (the caller adds it): "not valid JSON (near <unit> N)", "a NUL character (\u0000)
 * in a string at <unit> N ...", "duplicate key \"k\" ...". unit names the position for the
 * caller's kind of input: "byte" for a file, "column" for a row of a JSONL file. */
cJSON *lg_json_parse(const char *text, size_t len, const char *unit);
/* The same checks on a value cJSON already parsed from text[0, len) (a reader that finds where a
 * value ends itself): 0, or -1 with the reason. */
int lg_json_check(const cJSON *j, const char *text, size_t len, const char *unit);

#endif
