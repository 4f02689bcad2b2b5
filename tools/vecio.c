/* vecio.c - JSON helpers for the protocol vectors. */
#include "vecio.h"

#include <stdlib.h>
#include <string.h>

#include "kmdc_util.h"

void
vec_set_hex(json_t *obj, const char *key, const uint8_t *p, size_t len)
{
    char *hex = malloc(2 * len + 1);

    if (hex == NULL)
        abort();
    kmdc_hex_encode(hex, p, len);
    json_object_set_new(obj, key, json_string(hex));
    free(hex);
}

void
vec_set_u64(json_t *obj, const char *key, uint64_t v)
{
    json_object_set_new(obj, key, json_integer((json_int_t)v));
}

long
vec_get_hex(const json_t *obj, const char *key, uint8_t *out, size_t cap)
{
    const char *s = json_string_value(json_object_get(obj, key));
    size_t n;

    if (s == NULL)
        return -1;
    n = strlen(s);
    if (n % 2 != 0 || n / 2 > cap)
        return -1;
    if (kmdc_hex_decode(out, n / 2, s, n, NULL) != KMDC_OK)
        return -1;
    return (long)(n / 2);
}

int
vec_get_u64(const json_t *obj, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

void
vec_document(uint8_t *out, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        out[i] = (uint8_t)(i % 251);
}

json_t *
vec_meta_to_json(const kmdc_meta *m)
{
    json_t *o = json_object();
    size_t i;

    if (m->n_rcpt > 0) {
        json_t *a = json_array();
        for (i = 0; i < m->n_rcpt; i++)
            json_array_append_new(a, json_string(m->rcpt[i]));
        json_object_set_new(o, "rcpt", a);
    }
    if (m->has_name)
        json_object_set_new(o, "name", json_stringn((const char *)m->name, m->name_len));
    if (m->has_type)
        json_object_set_new(o, "type", json_string(m->type));
    if (m->has_size)
        vec_set_u64(o, "size", m->size);
    if (m->has_sent)
        vec_set_u64(o, "sent", m->sent);
    if (m->has_from)
        json_object_set_new(o, "from", json_string(m->from));
    if (m->has_fromserial)
        vec_set_u64(o, "fromserial", m->fromserial);
    if (m->has_msgid)
        vec_set_u64(o, "msgid", m->msgid);
    if (m->has_rcvd)
        vec_set_u64(o, "rcvd", m->rcvd);
    return o;
}

int
vec_meta_from_json(kmdc_meta *m, const json_t *obj)
{
    json_t *a = json_object_get(obj, "rcpt"), *v;
    const char *s;
    size_t i;

    kmdc_meta_init(m);
    if (a != NULL) {
        json_array_foreach(a, i, v) {
            s = json_string_value(v);
            if (s == NULL || kmdc_meta_add_rcpt(m, s, strlen(s), NULL) != KMDC_OK)
                return -1;
        }
    }
    if ((v = json_object_get(obj, "name")) != NULL &&
        kmdc_meta_set_name(m, (const uint8_t *)json_string_value(v),
                           json_string_length(v), NULL) != KMDC_OK)
        return -1;
    if ((s = json_string_value(json_object_get(obj, "type"))) != NULL &&
        kmdc_meta_set_type(m, s, strlen(s), NULL) != KMDC_OK)
        return -1;
    if ((s = json_string_value(json_object_get(obj, "from"))) != NULL &&
        kmdc_meta_set_from(m, s, strlen(s), NULL) != KMDC_OK)
        return -1;
    m->has_size = vec_get_u64(obj, "size", &m->size) == 0;
    m->has_sent = vec_get_u64(obj, "sent", &m->sent) == 0;
    m->has_fromserial = vec_get_u64(obj, "fromserial", &m->fromserial) == 0;
    m->has_msgid = vec_get_u64(obj, "msgid", &m->msgid) == 0;
    m->has_rcvd = vec_get_u64(obj, "rcvd", &m->rcvd) == 0;
    return 0;
}

kmdc_status
vec_buf_emit(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    struct vec_buf *b = arg;

    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        uint8_t *np;
        while (cap < b->len + len)
            cap *= 2;
        if ((np = realloc(b->p, cap)) == NULL)
            return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, len);
    b->len += len;
    return KMDC_OK;
}

void
vec_buf_free(struct vec_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}
