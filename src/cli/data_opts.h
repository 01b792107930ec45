/* data_opts.h — the options that say how to read data rows (formats.h), shared by train and eval:
 * --format and the key / column mapping. FORMAT is a const char * ("auto" by default), FM an
 * lg_field_map; both are read by lg_row_format_parse and lg_data_opts. */
#ifndef LG_DATA_OPTS_H
#define LG_DATA_OPTS_H

#define LG_DATA_FORMAT_OPTS(FORMAT, FM)                                                                               \
    {"--format", LG_OPT_STR, &(FORMAT),                                                                               \
     "row shape: auto (each row's, by its keys), text, prompt-completion, messages, sharegpt, alpaca (default auto)"},  \
        {"--text-field", LG_OPT_STR, &(FM).text, "key / CSV column holding the text (default text)"},                  \
        {"--prompt-field", LG_OPT_STR, &(FM).prompt, "key / column holding the prompt (default prompt)"},              \
        {"--completion-field", LG_OPT_STR, &(FM).completion,                                                           \
         "key / column holding the completion (default completion)"},                                                  \
        {"--messages-field", LG_OPT_STR, &(FM).messages, "key holding the chat messages (default messages)"},          \
        {"--conversations-field", LG_OPT_STR, &(FM).conversations,                                                     \
         "key holding ShareGPT turns (default conversations)"},                                                        \
        {"--instruction-field", LG_OPT_STR, &(FM).instruction,                                                         \
         "Alpaca: key / column of the instruction (default instruction)"},                                             \
        {"--input-field", LG_OPT_STR, &(FM).input, "Alpaca: key / column of the input (default input)"},               \
        {"--output-field", LG_OPT_STR, &(FM).output, "Alpaca: key / column of the output (default output)"},           \
        {"--system-field", LG_OPT_STR, &(FM).system,                                                                   \
         "Alpaca / ShareGPT: key / column of the system prompt (default system)"}

#endif
