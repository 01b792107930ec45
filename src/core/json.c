/* json.c — see json.h. */
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static int hex_zero4(const char *p) { return p[0] == '0' && p[1] == '0' && p[2] == '0' && p[3] == '0'; }

/* Offset of the first NUL a string would hold (a raw byte or a \u0000 escape), or len. The text
 * is known to be valid JSON here, so tracking quotes and escapes is all the lexing needed. */
static size_t find_nul(const char *s, size_t len) {
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == 0) return i;
        if (!in_str) {
            in_str = c == '"';
            continue;
        }
        if (c == '\\') {
            if (i + 5 < len && s[i + 1] == 'u' && hex_zero4(s + i + 2)) return i;
            i++; /* the escaped character */
        } else if (c == '"') {
            in_str = 0;
        }
    }
    return len;
}

static int cmp_key(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first repeated key of any object in the tree, or NULL. Small objects are compared pairwise,
 * large ones (a tokenizer's vocabulary) sorted: O(n log n). */
static const char *find_dup(const cJSON *j) {
    for (; j; j = j->next) {
        if (cJSON_IsObject(j) && j->child) {
            int n = 0;
            for (const cJSON *c = j->child; c; c = c->next) n++;
            if (n <= 16) {
                for (const cJSON *a = j->child; a; a = a->next)
                    for (const cJSON *b = a->next; b; b = b->next)
                        if (a->string && b->string && !strcmp(a->string, b->string)) return a->string;
            } else {
                const char **k = lg_malloc((size_t)n * sizeof *k);
                int m = 0;
                for (const cJSON *c = j->child; c; c = c->next) k[m++] = c->string ? c->string : "";
                qsort(k, (size_t)m, sizeof *k, cmp_key);
                const char *d = NULL;
                for (int i = 1; i < m && !d; i++)
                    if (!strcmp(k[i - 1], k[i])) d = k[i];
                free(k);
                if (d) return d;
            }
        }
        if ((cJSON_IsObject(j) || cJSON_IsArray(j)) && j->child) {
            const char *d = find_dup(j->child);
            if (d) return d;
        }
    }
    return NULL;
}

cJSON *lg_json_parse(const char *text, size_t len, const char *unit) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t at = 0;
    if (j) { /* only white space may follow the value */
        const char *e = end ? end : text + len;
        while (e < text + len && (*e == ' ' || *e == '\t' || *e == '\r' || *e == '\n')) e++;
        if (e < text + len) {
            cJSON_Delete(j);
            j = NULL;
            end = e;
        }
    }
    if (!j) {
        const char *ep = end ? end : cJSON_GetErrorPtr();
        at = ep && ep >= text && ep <= text + len ? (size_t)(ep - text) : 0;
        lg_errorf("not valid JSON (near %s %zu)", unit, at + 1);
        return NULL;
    }
    if (lg_json_check(j, text, len, unit) != 0) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int lg_json_check(const cJSON *j, const char *text, size_t len, const char *unit) {
    size_t at = find_nul(text, len);
    if (at < len)
        return lg_errorf("a NUL character (\\u0000) in a string at %s %zu: it would cut the text there; remove it",
                         unit, at + 1);
    const char *dup = find_dup(j);
    if (dup)
        return lg_errorf("duplicate key \"%.100s\" in one object: which value is meant is ambiguous (Python and "
                         "Hugging Face keep the last); keep one",
                         dup);
    return 0;
}
