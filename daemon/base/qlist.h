/* qlist.h - a FIFO of queries: an intrusive doubly linked list whose
 * items know the list they are on (so a query can leave it from a
 * callback or a cancel without the list at hand).
 *
 * The list type has `head`, `tail` (item pointers) and `n`; the item type
 * has `list` (a pointer to its list), `prev` and `next`.
 * QLIST_FUNCS(q, list_t, item_t) defines, static to the file:
 *
 *   void q_push(list_t *l, item_t *it);   appends at the tail
 *   void q_unlink(item_t *it);            removes it from its list
 */
#ifndef TG_BASE_QLIST_H
#define TG_BASE_QLIST_H

#define QLIST_FUNCS(prefix, list_t, item_t)                                                        \
    static void prefix##_push(list_t *l, item_t *it)                                               \
    {                                                                                              \
        it->list = l;                                                                              \
        it->next = NULL;                                                                           \
        it->prev = l->tail;                                                                        \
        if (l->tail)                                                                               \
            l->tail->next = it;                                                                    \
        else                                                                                       \
            l->head = it;                                                                          \
        l->tail = it;                                                                              \
        l->n++;                                                                                    \
    }                                                                                              \
                                                                                                   \
    static void prefix##_unlink(item_t *it)                                                        \
    {                                                                                              \
        list_t *l = it->list;                                                                      \
        if (it->prev)                                                                              \
            it->prev->next = it->next;                                                             \
        else                                                                                       \
            l->head = it->next;                                                                    \
        if (it->next)                                                                              \
            it->next->prev = it->prev;                                                             \
        else                                                                                       \
            l->tail = it->prev;                                                                    \
        l->n--;                                                                                    \
        it->list = NULL;                                                                           \
        it->prev = it->next = NULL;                                                                \
    }

#endif
