/* main.c — `loraga <command> [options]`: dispatch to the subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "core/version.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"convert", cmd_convert, "convert a llama2.c / GGUF model into a Hugging Face directory"},
    {"tokenize", cmd_tokenize, "print token ids of text or JSONL rows"},
    {"eval", cmd_eval, "loss / perplexity of a model (+ adapter) on data"},
    {"train", cmd_train, "fine-tune: full, LoRA family, LoRA-GA"},
    {"merge", cmd_merge, "merge a PEFT LoRA adapter into the base: a new Hugging Face directory"},
    {"export", cmd_export, "a model (+ adapter merged) or an adapter as GGUF for llama.cpp / Ollama"},
    {"generate", cmd_generate, "sample text from a model (+ adapter) with a KV cache"},
    {"bench", cmd_bench, "measure tokens/s, GFLOP/s and peak RSS of the engine"},
};

static void usage(void) {
    printf("loraga — LoRA / LoRA-GA fine-tuning of transformer language models\n\n"
           "usage: loraga <command> [options]   (loraga <command> --help for its options; loraga --version)\n\n"
           "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-10s %s\n", commands[i].name, commands[i].help);
    printf("\nstart here (README.md has the whole worked example):\n"
           "  make demo      LoRA-GA vs LoRA on SmolLM2-135M-Instruct, end to end, in minutes on 2 cores\n"
           "  loraga convert --from gguf --model SmolLM2-135M-Instruct.Q4_1.gguf --out smol\n"
           "  loraga train --model smol --data rows.jsonl --method lora-ga --lr 5e-5 --out run\n"
           "  loraga eval --model smol --adapter run --data heldout.jsonl\n"
           "  loraga generate --model smol --adapter run --temperature 0 --prompt '...'\n"
           "  loraga merge --model smol --adapter run --out smol-merged\n"
           "Every option and its default: loraga <command> --help. LoRA-GA: docs/loraga.md;\n"
           "training: docs/training.md; PEFT adapters, merge, generate: docs/interop.md.\n");
}

int main(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
        printf("loraga %s (git %s)\n", LG_VERSION, lg_git_commit());
        return 0;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "loraga: unknown command '%s' (try loraga --help)\n", argv[1]);
    return 2;
}
