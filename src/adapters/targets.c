/* targets.c — see targets.h. */
#include "adapters/targets.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

int lg_targets_is_regex(const char *spec) { return strpbrk(spec, "*+?()[]{}|^$\\") != NULL; }

/* PEFT's list rule: the path equals the entry or ends with "." + entry. */
static int suffix_match(const char *path, const char *e, size_t el) {
    size_t n = strlen(path);
    if (n == el) return !memcmp(path, e, el);
    return n > el && path[n - el - 1] == '.' && !memcmp(path + n - el, e, el);
}

/* "the model's modules are: q_proj, k_proj, ... (paths like model.layers.0.self_attn.q_proj)" */
static int no_match(lg_model *m, const char *what) {
    size_t cap = 512, len = 0;
    char *leaves = lg_malloc(cap);
    leaves[0] = 0;
    const int nl = lg_model_n_linears(m);
    for (int i = 0; i < nl; i++) {
        const char *nm = lg_model_linear(m, i)->name, *leaf = strrchr(nm, '.');
        leaf = leaf ? leaf + 1 : nm;
        int dup = 0;
        for (int j = 0; j < i && !dup; j++) {
            const char *n2 = lg_model_linear(m, j)->name, *l2 = strrchr(n2, '.');
            dup = !strcmp(l2 ? l2 + 1 : n2, leaf);
        }
        if (dup) continue;
        size_t need = len + strlen(leaf) + 3;
        if (need > cap) leaves = lg_realloc(leaves, cap = need * 2);
        len += (size_t)sprintf(leaves + len, "%s%s", len ? ", " : "", leaf);
    }
    int rc = lg_errorf("--targets: %s matches no linear layer of the model; its modules are: %s (paths like %s; "
                       "a list entry matches a path's end after a '.', a regex the whole path, or all-linear)",
                       what, nl ? leaves : "(none)", nl ? lg_model_linear(m, 0)->name : "?");
    free(leaves);
    return rc;
}

int lg_targets_resolve(lg_model *m, const char *spec, char **targets, int *count) {
    *targets = NULL;
    const int nl = lg_model_n_linears(m);
    int hits = 0;
    if (!spec || !*spec) return lg_errorf("--targets: empty");
    if (!strcmp(spec, "all-linear")) {
        if (!nl) return no_match(m, "all-linear");
        *targets = lg_strdup(spec);
        if (count) *count = nl;
        return 0;
    }
    if (!lg_targets_is_regex(spec)) {
        /* every entry must select something; the union is what attach will select */
        unsigned char *sel = lg_calloc((size_t)(nl ? nl : 1), 1);
        const char *c = spec;
        int entries = 0;
        while (*c) {
            const char *e = strchr(c, ',');
            if (!e) e = c + strlen(c);
            const char *b = c, *f = e;
            while (b < f && (*b == ' ' || *b == '\t')) b++;
            while (f > b && (f[-1] == ' ' || f[-1] == '\t')) f--;
            if (f > b) {
                int any = 0;
                entries++;
                for (int i = 0; i < nl; i++)
                    if (suffix_match(lg_model_linear(m, i)->name, b, (size_t)(f - b))) any = sel[i] = 1;
                if (!any) {
                    char what[160];
                    snprintf(what, sizeof what, "'%.*s'", (int)LG_MIN(f - b, 120), b);
                    free(sel);
                    return no_match(m, what);
                }
            }
            c = *e ? e + 1 : e;
        }
        for (int i = 0; i < nl; i++) hits += sel[i];
        free(sel);
        if (!entries) return lg_errorf("--targets '%s': no module names in it", spec);
        *targets = lg_strdup(spec);
        if (count) *count = hits;
        return 0;
    }
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)spec, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &err,
                                   &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return lg_errorf("--targets '%s': not a valid regular expression (%s, at offset %zu)", spec, (char *)msg,
                         (size_t)off);
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t cap = 256, len = 0;
    char *out = lg_malloc(cap);
    out[0] = 0;
    for (int i = 0; i < nl; i++) {
        const char *nm = lg_model_linear(m, i)->name;
        if (pcre2_match(re, (PCRE2_SPTR)nm, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) < 0) continue;
        size_t need = len + strlen(nm) + 2;
        if (need > cap) out = lg_realloc(out, cap = need * 2);
        len += (size_t)sprintf(out + len, "%s%s", len ? "," : "", nm);
        hits++;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (!hits) {
        free(out);
        char what[200];
        snprintf(what, sizeof what, "the regex '%.150s'", spec);
        return no_match(m, what);
    }
    *targets = out;
    if (count) *count = hits;
    return 0;
}
