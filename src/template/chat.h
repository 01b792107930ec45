/* chat.h — a model's chat template applied as transformers' apply_chat_template applies it, and the
 * assistant spans of a conversation found by rendering.
 *
 * Rendering: the messages are normalised as transformers does (keys whose value is null dropped;
 * reasoning under "reasoning_content" / "thinking" / "reasoning" copied to "thinking" and
 * "reasoning_content"), then the template runs with messages, add_generation_prompt, tools = none,
 * documents = none, the special tokens (bos_token, eos_token, ... : what the tokenizer has) and the
 * extra variables (e.g. enable_thinking, date_string, tools), which override the others.
 *
 * Assistant spans (the loss of a chat row): with {% generation %} blocks in the template, what they
 * produce (transformers' return_assistant_tokens_mask). Otherwise, turn by turn, by rendering
 * prefixes (TRL's prompt/completion rule, applied to each assistant message i):
 *   T = render(messages), Q = render(messages[:i], add_generation_prompt), P = render(messages[:i+1]);
 *   Q must be a prefix of T and of P; the span starts at |Q| and runs as far as the turn rendered
 *   last (X = P[|Q|:]) agrees with the conversation (Y = T[|Q|:]): the longer of their common prefix
 *   and the longest suffix of X that begins Y. So the span is the assistant's text and the
 *   end-of-turn markup the template writes after it (<|im_end|>\n, <|eot_id|>, </s>, ...), and it
 *   covers Qwen3 (an empty think block only in the last turn) and Phi-3.5 (EOS only after the last
 *   turn). A turn that cannot be located so (e.g. Mistral with a system message in a multi-turn
 *   conversation: the system text moves to the last user turn) is an error naming the message. */
#ifndef LG_CHAT_H
#define LG_CHAT_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "template/jinja.h"

typedef struct lg_chat lg_chat;

/* tmpl: the Jinja source; name: for messages; special: JSON object of special token strings
 * ({"bos_token": "<s>", ...}; NULL = none); extra: more variables (NULL = none). Both are copied. */
int lg_chat_new(const char *tmpl, const char *name, const cJSON *special, const cJSON *extra, lg_chat **out);
void lg_chat_free(lg_chat *c);

/* messages: a JSON array of message objects. *out malloc'd, NUL-terminated. */
int lg_chat_render(const lg_chat *c, const cJSON *messages, int add_generation_prompt, char **out, size_t *len);

/* The conversation rendered (no generation prompt) and the byte ranges of its assistant turns, in
 * order (malloc'd; *n may be 0 when there is no assistant message). A message with "weight": 0 (or
 * false) has no span: it is context, not a target. */
int lg_chat_assistant_spans(const lg_chat *c, const cJSON *messages, char **text, size_t *len, lg_jinja_span **spans,
                            int *n);

#endif
