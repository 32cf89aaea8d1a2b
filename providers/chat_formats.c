/* chat_formats.c - the registry of wire formats (see chat.h). Kept apart
 * from chat.c so that code using only the model links no adapter. */
#include <string.h>

#include "providers/chat.h"

const chat_format *chat_format_get(chat_format_id id)
{
    switch (id) {
    case CHAT_FMT_OPENAI: return &chat_format_openai;
    case CHAT_FMT_ANTHROPIC: return &chat_format_anthropic;
    case CHAT_FMT_GEMINI: return &chat_format_gemini;
    default: return NULL;
    }
}

const chat_format *chat_format_by_name(const char *name)
{
    for (int i = 0; i < CHAT_FMT_COUNT; i++) {
        const chat_format *f = chat_format_get((chat_format_id)i);
        if (strcmp(f->name, name) == 0)
            return f;
    }
    return NULL;
}

