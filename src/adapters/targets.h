/* targets.h — which linear layers an adapter targets, in PEFT's three forms:
 *   all-linear        every linear layer of the decoder (never the output head)
 *   a list            "q_proj,v_proj" or "self_attn.q_proj": a module whose path equals an entry or
 *                     ends with "." + entry (PEFT's target_modules given as a list)
 *   a regex           any spec holding one of  * + ? ( ) [ ] { } | ^ $ \  is one regular expression
 *                     (PCRE2) that must match the WHOLE module path (PEFT's target_modules given as
 *                     a string: re.fullmatch), e.g. ".*\.(q_proj|v_proj)" or "model\.layers\.[0-3]\..*"
 * A list entry or a regex that matches nothing is an error naming it and the modules the model has. */
#ifndef LG_TARGETS_H
#define LG_TARGETS_H

#include "model/model.h"

int lg_targets_is_regex(const char *spec);

/* Checks spec against m's linear layers and returns, as a fresh string, the targets to hand to
 * lg_adapters_attach: spec itself for all-linear and lists, the comma-joined paths of the layers
 * a regex selects. *count receives the number of layers selected (may be NULL). */
int lg_targets_resolve(lg_model *m, const char *spec, char **targets, int *count);

#endif
