/* config_yaml.h — a command's options from a YAML file (`train --config run.yaml`), and written
 * back as YAML (--print-config) or JSON (run.json), through the command's own option table.
 *
 * The file is one mapping of option names — the flags without "--", '_' and '-' alike
 * (batch_size or batch-size) — to values: a scalar, a flag's true/false (yes/no, on/off), or a
 * list of scalars, joined with "," (targets: [q_proj, v_proj]); null or an empty value leaves the
 * default. Each value goes through the same parser and checks as on the command line, so options
 * given on the command line after it override it (a flag the file sets true stays on: flags have
 * no --no- form). An unknown key, a key given twice, a nested
 * mapping, a bad value: an error naming FILE:LINE and the key. Parsed with libyaml. */
#ifndef LG_CONFIG_YAML_H
#define LG_CONFIG_YAML_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include "cli.h"

typedef struct lg_yaml_cfg lg_yaml_cfg; /* owns the strings the options now point to */

/* The value of --config FILE / --config=FILE in argv[1..argc), or NULL. */
const char *lg_config_arg(int argc, char **argv);
/* Applies path's options; given[i] = 1 for each option it sets. Free *owner (even on error) after
 * the last use of the options. */
int lg_opts_load_yaml(const char *path, const char *cmd, const lg_opt *opts, int nopts, unsigned char *given,
                      lg_yaml_cfg **owner);
void lg_yaml_cfg_free(lg_yaml_cfg *c);
/* given[i] = 1 for each option argv[1..argc) sets. */
void lg_opts_mark_given(int argc, char **argv, const lg_opt *opts, int nopts, unsigned char *given);

/* Every option with its current value (--config and --print-config themselves left out): as a
 * YAML mapping that lg_opts_load_yaml reads back to the same values (the options named in
 * as_null, a NULL-terminated list, written as null: what another option decides), or as a JSON
 * object. */
int lg_opts_print_yaml(FILE *f, const lg_opt *opts, int nopts, const char *comment, const char *const *as_null);
cJSON *lg_opts_to_json(const lg_opt *opts, int nopts);

#endif
