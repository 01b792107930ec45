/* chat.c — see chat.h. */
#include "template/chat.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

struct lg_chat {
    lg_jinja *t;
    cJSON *vars; /* special tokens + extra, tools/documents defaulted to null */
    char *name;
};

int lg_chat_new(const char *tmpl, const char *name, const cJSON *special, const cJSON *extra, lg_chat **out) {
    *out = NULL;
    if (!tmpl) return lg_errorf("%s: no chat template", name ? name : "chat");
    lg_chat *c = lg_calloc(1, sizeof *c);
    c->name = lg_strdup(name ? name : "chat template");
    if (lg_jinja_parse(tmpl, strlen(tmpl), c->name, &c->t)) {
        lg_chat_free(c);
        return -1;
    }
    c->vars = cJSON_CreateObject();
    cJSON_AddItemToObject(c->vars, "tools", cJSON_CreateNull());
    cJSON_AddItemToObject(c->vars, "documents", cJSON_CreateNull());
    const cJSON *srcs[2] = {special, extra}, *x;
    for (int s = 0; s < 2; s++) {
        if (!srcs[s]) continue;
        cJSON_ArrayForEach(x, srcs[s]) {
            if (!x->string) continue;
            cJSON_DeleteItemFromObjectCaseSensitive(c->vars, x->string);
            cJSON_AddItemToObject(c->vars, x->string, cJSON_Duplicate(x, 1));
        }
    }
    *out = c;
    return 0;
}

void lg_chat_free(lg_chat *c) {
    if (!c) return;
    lg_jinja_free(c->t);
    cJSON_Delete(c->vars);
    free(c->name);
    free(c);
}

/* transformers' _normalize_chat_messages + _alias_reasoning_fields */
static cJSON *normalise(const cJSON *messages, int upto) {
    cJSON *out = cJSON_CreateArray();
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, messages) {
        if (upto >= 0 && i++ >= upto) break;
        if (!cJSON_IsObject(m)) {
            cJSON_AddItemToArray(out, cJSON_Duplicate(m, 1));
            continue;
        }
        const cJSON *reason = NULL;
        static const char *const RF[] = {"reasoning_content", "thinking", "reasoning"};
        for (int k = 0; k < 3 && !reason; k++) {
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, RF[k]);
            if (r && !cJSON_IsNull(r)) reason = r;
        }
        cJSON *o = cJSON_CreateObject();
        if (reason) cJSON_AddItemToObject(o, "thinking", cJSON_Duplicate(reason, 1));
        const cJSON *x;
        cJSON_ArrayForEach(x, m) {
            if (!x->string || cJSON_IsNull(x)) continue;
            if (reason && (!strcmp(x->string, "thinking") || !strcmp(x->string, "reasoning_content"))) {
                if (!strcmp(x->string, "reasoning_content"))
                    cJSON_AddItemToObject(o, "reasoning_content", cJSON_Duplicate(reason, 1));
                continue;
            }
            cJSON_AddItemToObject(o, x->string, cJSON_Duplicate(x, 1));
        }
        if (reason && !cJSON_GetObjectItemCaseSensitive(o, "reasoning_content"))
            cJSON_AddItemToObject(o, "reasoning_content", cJSON_Duplicate(reason, 1));
        cJSON_AddItemToArray(out, o);
    }
    return out;
}

static int render_n(const lg_chat *c, const cJSON *messages, int upto, int agp, char **out, size_t *len,
                    lg_jinja_span **gen, int *ngen) {
    cJSON *vars = cJSON_Duplicate(c->vars, 1);
    cJSON_AddItemToObject(vars, "messages", normalise(messages, upto));
    cJSON_DeleteItemFromObjectCaseSensitive(vars, "add_generation_prompt");
    cJSON_AddItemToObject(vars, "add_generation_prompt", cJSON_CreateBool(agp));
    int rc = lg_jinja_render(c->t, vars, out, len, gen, ngen);
    cJSON_Delete(vars);
    return rc;
}

int lg_chat_render(const lg_chat *c, const cJSON *messages, int add_generation_prompt, char **out, size_t *len) {
    return render_n(c, messages, -1, add_generation_prompt, out, len, NULL, NULL);
}

static int is_assistant(const cJSON *m) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    return cJSON_IsString(role) && !strcmp(role->valuestring, "assistant");
}

/* "weight": 0 / false takes a turn out of the loss (OpenAI's fine-tuning format; conversational
 * prompt-completion rows mark their prompt turns so). */
static int no_loss(const cJSON *m) {
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(m, "weight");
    return cJSON_IsFalse(w) || (cJSON_IsNumber(w) && w->valuedouble == 0);
}

int lg_chat_assistant_spans(const lg_chat *c, const cJSON *messages, char **text, size_t *len, lg_jinja_span **spans,
                            int *n) {
    *text = NULL;
    *spans = NULL;
    *n = 0;
    size_t tn;
    char *T;
    lg_jinja_span *gen = NULL;
    int ngen = 0;
    if (render_n(c, messages, -1, 0, &T, &tn, &gen, &ngen)) return -1;
    const int nm = cJSON_GetArraySize(messages);
    if (lg_jinja_has_generation(c->t)) {
        /* one generation block per assistant turn, in order: a turn with weight 0 loses its span */
        int na = 0, k = 0, drop = 0;
        for (int i = 0; i < nm; i++) {
            const cJSON *m = cJSON_GetArrayItem(messages, i);
            if (is_assistant(m)) na++, drop |= no_loss(m);
        }
        if (drop && na != ngen) {
            free(T), free(gen);
            return lg_errorf("a message has weight 0, but this template's {%% generation %%} blocks (%d) do not match "
                             "the %d assistant turns one to one", ngen, na);
        }
        for (int i = 0, g = 0; i < nm && drop; i++) {
            const cJSON *m = cJSON_GetArrayItem(messages, i);
            if (!is_assistant(m)) continue;
            if (!no_loss(m)) gen[k++] = gen[g];
            g++;
        }
        *text = T;
        *len = tn;
        *spans = gen;
        *n = drop ? k : ngen;
        return 0;
    }
    free(gen);
    int ns = 0;
    lg_jinja_span *sp = lg_malloc((size_t)(nm + 1) * sizeof *sp);
    for (int i = 0; i < nm; i++) {
        const cJSON *msg = cJSON_GetArrayItem(messages, i);
        if (!is_assistant(msg) || no_loss(msg)) continue;
        char *Q = NULL, *Pt = NULL;
        size_t qn, pn;
        if (render_n(c, messages, i, 1, &Q, &qn, NULL, NULL) || render_n(c, messages, i + 1, 0, &Pt, &pn, NULL, NULL)) {
            lg_errorf_prefix("messages[%d] (rendering the conversation up to this assistant turn)", i);
            free(Q), free(Pt), free(T), free(sp);
            return -1;
        }
        if (qn > tn || memcmp(Q, T, qn) || qn > pn || memcmp(Q, Pt, qn)) {
            free(Q), free(Pt), free(T), free(sp);
            return lg_errorf("messages[%d]: cannot locate this assistant turn by rendering: the template renders the "
                             "messages before it + the generation prompt differently from the start of the whole "
                             "conversation (e.g. it moves a system message to the last user turn); give such "
                             "conversations one assistant turn per row", i);
        }
        const char *X = Pt + qn, *Y = T + qn;
        size_t xn = pn - qn, yn = tn - qn, a = 0, b = 0;
        while (a < xn && a < yn && X[a] == Y[a]) a++;
        for (size_t k = LG_MIN(xn, yn); k > 0; k--)
            if (!memcmp(X + xn - k, Y, k)) {
                b = k;
                break;
            }
        free(Q), free(Pt);
        size_t e = qn + LG_MAX(a, b);
        if (e == qn) {
            free(T), free(sp);
            return lg_errorf("messages[%d]: cannot locate this assistant turn by rendering: the conversation "
                             "continues differently from the turn rendered on its own", i);
        }
        sp[ns].a = qn;
        sp[ns++].b = e;
    }
    *text = T;
    *len = tn;
    *spans = sp;
    *n = ns;
    return 0;
}
