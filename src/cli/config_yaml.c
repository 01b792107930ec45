/* config_yaml.c — see config_yaml.h. */
#include "config_yaml.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "core/util.h"

struct lg_yaml_cfg {
    char **s;
    int n;
};

void lg_yaml_cfg_free(lg_yaml_cfg *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) free(c->s[i]);
    free(c->s);
    free(c);
}

static char *keep(lg_yaml_cfg *c, const char *s, size_t n) {
    char *d = lg_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    c->s = lg_realloc(c->s, (size_t)(c->n + 1) * sizeof *c->s);
    return c->s[c->n++] = d;
}

static int skipped_opt(const char *name) { return !strcmp(name, "--config") || !strcmp(name, "--print-config"); }

const char *lg_config_arg(int argc, char **argv) {
    const char *v = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) v = argv[++i];
        else if (!strncmp(argv[i], "--config=", 9)) v = argv[i] + 9;
    }
    return v;
}

/* "batch_size" -> the option "--batch-size" */
static int find_opt(const lg_opt *opts, int nopts, const char *key) {
    for (int i = 0; i < nopts; i++) {
        const char *a = opts[i].name + 2, *b = key;
        while (*a && *b && (*a == *b || (*a == '-' && *b == '_'))) a++, b++;
        if (!*a && !*b) return i;
    }
    return -1;
}

void lg_opts_mark_given(int argc, char **argv, const lg_opt *opts, int nopts, unsigned char *given) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        for (int j = 0; j < nopts; j++)
            if (strlen(opts[j].name) == n && !strncmp(opts[j].name, a, n)) {
                given[j] = 1;
                if (opts[j].type != LG_OPT_FLAG && !eq) i++; /* its value */
            }
    }
}

static int is_null(const yaml_event_t *e) {
    const char *v = (const char *)e->data.scalar.value;
    if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0; /* "null" quoted is a string */
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL");
}

static int yaml_bool(const char *v, int *b) {
    static const char *const t[] = {"true", "yes", "on"}, *const f[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (!strcasecmp(v, t[i])) return *b = 1, 0;
        if (!strcasecmp(v, f[i])) return *b = 0, 0;
    }
    return -1;
}

/* One key: value through lg_parse_opts, as if it were on the command line. */
static int apply(const char *path, long line, const char *cmd, const lg_opt *opts, int nopts, unsigned char *given,
                 unsigned char *seen, lg_yaml_cfg *own, const char *key, const char *val) {
    int i = find_opt(opts, nopts, key);
    if (i < 0 || skipped_opt(opts[i].name))
        return lg_errorf("%s:%ld: '%s' is %s (the keys are %s's options without '--', e.g. lr, steps, batch-size; see "
                         "loraga %s --help)",
                         path, line, key, i < 0 ? "not an option" : "not allowed in a config file", cmd, cmd);
    if (seen[i]) return lg_errorf("%s:%ld: '%s' is given twice", path, line, key);
    seen[i] = 1;
    if (!val) return 0; /* null: the default */
    given[i] = 1;
    char *av[3] = {(char *)cmd, (char *)opts[i].name, keep(own, val, strlen(val))};
    int ac = 3;
    if (opts[i].type == LG_OPT_FLAG) {
        int b;
        if (yaml_bool(val, &b) != 0)
            return lg_errorf("%s:%ld: '%s' is a flag: true or false, not '%s'", path, line, key, val);
        if (!b) return 0;
        ac = 2;
    }
    if (lg_parse_opts(ac, av, opts, nopts, "") != 0)
        return lg_errorf("%s:%ld: the value of '%s' is not valid (the line above says why)", path, line, key);
    return 0;
}

int lg_opts_load_yaml(const char *path, const char *cmd, const lg_opt *opts, int nopts, unsigned char *given,
                      lg_yaml_cfg **owner) {
    lg_yaml_cfg *own = *owner = lg_calloc(1, sizeof *own);
    char *data;
    size_t len;
    if (lg_read_file(path, &data, &len) != 0) return lg_errorf_prefix("--config");
    yaml_parser_t p;
    yaml_event_t e;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_string(&p, (const unsigned char *)data, len);
    int rc = -1, depth = 0, docs = 0, have_event = 0;
    char *key = NULL, *list = NULL;
    unsigned char *seen = lg_calloc((size_t)nopts, 1);
    size_t list_len = 0;
    long key_line = 0;
    for (;;) {
        if (!yaml_parser_parse(&p, &e)) {
            lg_errorf("%s:%ld: not valid YAML: %s", path, (long)p.problem_mark.line + 1,
                      p.problem ? p.problem : "parse error");
            goto done;
        }
        have_event = 1;
        long line = (long)e.start_mark.line + 1;
        switch (e.type) {
        case YAML_STREAM_END_EVENT: rc = 0; goto done;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                lg_errorf("%s:%ld: a second YAML document; the configuration is one mapping", path, line);
                goto done;
            }
            break;
        case YAML_MAPPING_START_EVENT:
            if (depth || key) {
                lg_errorf("%s:%ld: %s%s%sa nested mapping is not an option value", path, line, key ? "'" : "",
                          key ? key : "", key ? "': " : "");
                goto done;
            }
            depth = 1;
            break;
        case YAML_MAPPING_END_EVENT: depth = 0; break;
        case YAML_SEQUENCE_START_EVENT:
            if (!key || list) {
                lg_errorf("%s:%ld: %s", path, line,
                          key ? "a list inside a list is not an option value" : "the configuration must be a mapping "
                                                                                "of option: value");
                goto done;
            }
            list = lg_calloc(1, 1);
            list_len = 0;
            break;
        case YAML_SEQUENCE_END_EVENT:
            if (apply(path, key_line, cmd, opts, nopts, given, seen, own, key, list) != 0) goto done;
            free(key), free(list);
            key = list = NULL;
            break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)e.data.scalar.value;
            if (!depth) {
                lg_errorf("%s:%ld: the configuration must be a mapping of option: value", path, line);
                goto done;
            }
            if (list) { /* an element of a list value */
                size_t n = strlen(v);
                list = lg_realloc(list, list_len + n + 2);
                if (list_len) list[list_len++] = ',';
                memcpy(list + list_len, v, n + 1);
                list_len += n;
            } else if (!key) {
                key = lg_strdup(v);
                key_line = line;
            } else {
                if (apply(path, key_line, cmd, opts, nopts, given, seen, own, key, is_null(&e) ? NULL : v) != 0) goto done;
                free(key);
                key = NULL;
            }
            break;
        }
        case YAML_ALIAS_EVENT:
            lg_errorf("%s:%ld: YAML aliases (*name) are not supported in a configuration", path, line);
            goto done;
        default: break;
        }
        yaml_event_delete(&e);
        have_event = 0;
    }
done:
    if (have_event) yaml_event_delete(&e);
    yaml_parser_delete(&p);
    free(key), free(list), free(data), free(seen);
    return rc;
}

/* ---- writing ---------------------------------------------------------------------------- */

/* the shortest decimal that reads back as the same float */
static void fmt_float(char *buf, size_t n, float f) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return;
    }
}

static int emit(yaml_emitter_t *em, yaml_event_t *e) { return yaml_emitter_emit(em, e) ? 0 : -1; }

static int emit_scalar(yaml_emitter_t *em, const char *v, int quote) {
    yaml_event_t e;
    yaml_scalar_event_initialize(&e, NULL, NULL, (const yaml_char_t *)v, (int)strlen(v), 1, 1,
                                 quote ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE);
    return emit(em, &e);
}

/* a string that a plain scalar would turn into null or a boolean */
static int needs_quotes(const char *v) {
    int b;
    return !*v || !strcmp(v, "~") || !strcasecmp(v, "null") || yaml_bool(v, &b) == 0;
}

int lg_opts_print_yaml(FILE *f, const lg_opt *opts, int nopts, const char *comment, const char *const *as_null) {
    if (comment) fprintf(f, "# %s\n", comment);
    yaml_emitter_t em;
    yaml_event_t e;
    yaml_emitter_initialize(&em);
    yaml_emitter_set_output_file(&em, f);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, 1 << 20);
    int rc = 0;
    yaml_stream_start_event_initialize(&e, YAML_UTF8_ENCODING);
    rc |= emit(&em, &e);
    yaml_document_start_event_initialize(&e, NULL, NULL, NULL, 1);
    rc |= emit(&em, &e);
    yaml_mapping_start_event_initialize(&e, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
    rc |= emit(&em, &e);
    for (int i = 0; i < nopts && !rc; i++) {
        if (skipped_opt(opts[i].name)) continue;
        char buf[64];
        const char *v = buf;
        int quote = 0;
        switch (opts[i].type) {
        case LG_OPT_STR:
            v = *(const char **)opts[i].dst;
            quote = v && needs_quotes(v);
            if (!v) v = "null";
            break;
        case LG_OPT_INT: snprintf(buf, sizeof buf, "%d", *(int *)opts[i].dst); break;
        case LG_OPT_FLOAT: fmt_float(buf, sizeof buf, *(float *)opts[i].dst); break;
        case LG_OPT_FLAG: v = *(int *)opts[i].dst ? "true" : "false"; break;
        case LG_OPT_SIZE: snprintf(buf, sizeof buf, "%zu", *(size_t *)opts[i].dst); break;
        }
        for (const char *const *q = as_null; q && *q; q++)
            if (!strcmp(*q, opts[i].name)) v = "null", quote = 0;
        rc |= emit_scalar(&em, opts[i].name + 2, 0);
        rc |= emit_scalar(&em, v, quote);
    }
    yaml_mapping_end_event_initialize(&e);
    rc |= emit(&em, &e);
    yaml_document_end_event_initialize(&e, 1);
    rc |= emit(&em, &e);
    yaml_stream_end_event_initialize(&e);
    rc |= emit(&em, &e);
    if (rc) lg_errorf("writing the configuration: %s", em.problem ? em.problem : "YAML emitter error");
    yaml_emitter_delete(&em);
    return rc ? -1 : 0;
}

cJSON *lg_opts_to_json(const lg_opt *opts, int nopts) {
    cJSON *j = cJSON_CreateObject();
    for (int i = 0; i < nopts; i++) {
        if (skipped_opt(opts[i].name)) continue;
        const char *k = opts[i].name + 2;
        char buf[64];
        switch (opts[i].type) {
        case LG_OPT_STR: {
            const char *v = *(const char **)opts[i].dst;
            if (v) cJSON_AddStringToObject(j, k, v);
            else cJSON_AddNullToObject(j, k);
            break;
        }
        case LG_OPT_INT: cJSON_AddNumberToObject(j, k, *(int *)opts[i].dst); break;
        case LG_OPT_FLOAT:
            fmt_float(buf, sizeof buf, *(float *)opts[i].dst);
            cJSON_AddNumberToObject(j, k, strtod(buf, NULL));
            break;
        case LG_OPT_FLAG: cJSON_AddBoolToObject(j, k, *(int *)opts[i].dst); break;
        case LG_OPT_SIZE: cJSON_AddNumberToObject(j, k, (double)*(size_t *)opts[i].dst); break;
        }
    }
    return j;
}
