/* lora_io.h — PEFT LoRA adapters in and out of a model beyond lora.h: load a saved adapter
 * directory (ours or PEFT's), merge adapters into the base weights, and the llama2.c q/k row
 * order that both the export and the import must respect. */
#ifndef LG_LORA_IO_H
#define LG_LORA_IO_H

#include "adapters/lora.h"

/* Load a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, peft_type
 * "LORA", plain/rsLoRA/DoRA, uniform r and alpha) onto m: attaches adapters to exactly the
 * modules present in the file (init NONE) and fills A, B (and DoRA's magnitude). Errors name
 * the file and the key or field. A PiSSA/LoRA-GA export (rank 2r) loads onto the ORIGINAL base. */
int lg_adapters_load_peft(lg_model *m, const char *dir, lg_adapters **out);

/* Fold every adapter into its base weight (W <- W + s B diag(E) A; DoRA: rows rescaled to
 * mag / ||W + sBA||), then detach and free them. The model then computes what it computed
 * with the adapters, without them (e.g. before lg_model_save_hf). */
void lg_adapters_merge_and_free(lg_adapters *a);

/* llama2.c checkpoints keep q/k rows in interleaved-RoPE order; lg_model_save_hf writes
 * rotate-half order. Row `row` of the HF layout is in-memory row lg_lora_half_row(row, hd). */
int lg_lora_half_row(int row, int hd);
/* Whether this adapter's output rows (lora_B rows, DoRA magnitude) need that permutation. */
int lg_lora_rows_interleaved(const lg_model *m, const lg_lora *l);

/* State outside the parameters and the optimizer that an exact resume needs: every adapter's
 * dropout call count and, for AdaLoRA, the sensitivity EMAs, rank mask and phase. An opaque
 * byte blob (versioned, checked against the adapters' shapes on load). */
size_t lg_adapters_state_bytes(const lg_adapters *a);
void lg_adapters_state_save(const lg_adapters *a, void *dst); /* writes state_bytes() bytes */
int lg_adapters_state_load(lg_adapters *a, const void *src, size_t n);

#endif
