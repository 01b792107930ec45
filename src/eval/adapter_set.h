/* adapter_set.h — a PEFT LoRA adapter directory (ours or one written by PEFT) applied to a model
 * for evaluation, merging and generation.
 *
 * Beyond lg_adapters_load_peft (src/adapters/lora_io.h) this reads PEFT's per-module rank_pattern
 * and alpha_pattern: modules are grouped by (r, alpha) and each group is one lg_adapters attached
 * to exactly its modules, so the forward is the same code as training's. A module's r and alpha
 * come from the first pattern key that matches it the way PEFT matches them (Python regex
 * `(.*\.)?(KEY)$` against the module path), else from "r" / "lora_alpha".
 *
 * Everything is checked before the model is touched, and every refusal names the file and the
 * field or tensor: peft_type other than LORA; config features that change the forward and are not
 * implemented (lora_bias, modules_to_save, trainable tokens, layer replication, aLoRA, target
 * parameters, init schemes that rewrite the base weights when PEFT loads them: pissa, olora,
 * corda, loftq, lora_ga); tensors that are not lora_A / lora_B / DoRA magnitude; modules that are
 * not linear layers of the model or that target_modules does not select; target_modules entries
 * that select nothing; lora_A without lora_B (or the reverse); a magnitude without use_dora (or
 * the reverse); any shape that differs from what r and the layer's size imply. */
#ifndef LG_ADAPTER_SET_H
#define LG_ADAPTER_SET_H

#include "adapters/lora.h"
#include "model/model.h"

typedef struct lg_adapter_set lg_adapter_set;

/* Load dir (adapter_config.json + adapter_model.safetensors) onto m. A model read from a llama2.c
 * .bin keeps interleaved q/k rows; lora_B rows and magnitudes are permuted to match. */
int lg_adapter_set_load(lg_model *m, const char *dir, lg_adapter_set **out);

int lg_adapter_set_groups(const lg_adapter_set *s);        /* distinct (r, alpha) groups */
lg_adapters *lg_adapter_set_group(lg_adapter_set *s, int i);
int lg_adapter_set_modules(const lg_adapter_set *s);       /* adapted linear layers in all */
/* One line for messages, e.g. "LoRA (DoRA) on 35 modules, r 8, alpha 16". */
const char *lg_adapter_set_describe(const lg_adapter_set *s);

/* Fold every adapter into the base weights (lg_adapters_merge_and_free per group) and free. */
void lg_adapter_set_merge_and_free(lg_adapter_set *s);
/* Detach from the model and free. */
void lg_adapter_set_free(lg_adapter_set *s);

#endif
