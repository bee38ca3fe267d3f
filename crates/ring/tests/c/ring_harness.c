/*
 * Differential harness: applies xen/io/ring.h's own macros to a shared page
 * following a script on stdin, and prints what each step returned and the
 * final bytes of the page. tests/differential.rs runs the same script on the
 * Rust ring and requires identical output. Written for dom0kit's tests.
 *
 * Script lines:
 *   reset ORDER START   new ring of 1<<ORDER pages, all indices at START
 *   req ID              front: put a request built from ID ("full" if none free)
 *   pushreq             front: RING_PUSH_REQUESTS_AND_CHECK_NOTIFY
 *   takereq             back: copy out the next request, if any
 *   rsp ID STATUS       back: put a response
 *   pushrsp             back: RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
 *   takersp             front: copy out the next response, if any
 *   finalreq            back: RING_FINAL_CHECK_FOR_REQUESTS
 *   finalrsp            front: RING_FINAL_CHECK_FOR_RESPONSES
 *   dump                private indices and the page, in hex
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ring.h maps xen_mb() and friends to these for the default interface
 * version; on x86 rmb and wmb are compiler barriers, mb is a full fence. */
#define mb() __sync_synchronize()
#define rmb() __asm__ __volatile__("" ::: "memory")
#define wmb() __asm__ __volatile__("" ::: "memory")
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

static unsigned char *page;
static size_t page_len;
static blkif_front_ring_t front;
static blkif_back_ring_t back;

static void fill_request(blkif_request_t *r, unsigned long long id)
{
    memset(r, 0, sizeof(*r));
    r->operation = id % 3;
    r->nr_segments = id % 12;
    r->handle = (uint16_t)(id * 7);
    r->id = id;
    r->sector_number = id * 3 + 1;
    for (int i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
        r->seg[i].gref = (grant_ref_t)(id + i);
        r->seg[i].first_sect = i;
        r->seg[i].last_sect = 7;
    }
}

int main(void)
{
    char line[256];
    while (fgets(line, sizeof(line), stdin)) {
        unsigned int order, start, status;
        unsigned long long id;
        int notify, work;
        if (sscanf(line, "reset %u %u", &order, &start) == 2) {
            free(page);
            page_len = 4096u << order;
            page = aligned_alloc(4096, page_len);
            memset(page, 0xa5, page_len);
            blkif_sring_t *s = (blkif_sring_t *)page;
            if (start == 0) {
                SHARED_RING_INIT(s);
                FRONT_RING_INIT(&front, s, page_len);
                BACK_RING_INIT(&back, s, page_len);
            } else {
                s->req_prod = s->rsp_prod = start;
                s->req_event = s->rsp_event = start + 1;
                FRONT_RING_ATTACH(&front, s, start, page_len);
                BACK_RING_ATTACH(&back, s, start, page_len);
            }
            printf("size %u\n", RING_SIZE(&front));
        } else if (sscanf(line, "req %llu", &id) == 1) {
            if (RING_FULL(&front)) {
                printf("full\n");
            } else {
                blkif_request_t r;
                fill_request(&r, id);
                memcpy(RING_GET_REQUEST(&front, front.req_prod_pvt), &r, sizeof(r));
                front.req_prod_pvt++;
                printf("ok\n");
            }
        } else if (strcmp(line, "pushreq\n") == 0) {
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
            printf("notify %d\n", notify);
        } else if (strcmp(line, "takereq\n") == 0) {
            if (!RING_HAS_UNCONSUMED_REQUESTS(&back)) {
                printf("none\n");
            } else {
                blkif_request_t r;
                RING_COPY_REQUEST(&back, back.req_cons, &r);
                back.req_cons++;
                printf("req %llu %llu %u %u %u %u %u\n", (unsigned long long)r.id,
                       (unsigned long long)r.sector_number, r.operation, r.nr_segments,
                       r.handle, r.seg[0].gref, r.seg[10].gref);
            }
        } else if (sscanf(line, "rsp %llu %u", &id, &status) == 2) {
            blkif_response_t r;
            memset(&r, 0, sizeof(r));
            r.id = id;
            r.operation = id % 3;
            r.status = (int16_t)status;
            memcpy(RING_GET_RESPONSE(&back, back.rsp_prod_pvt), &r, sizeof(r));
            back.rsp_prod_pvt++;
            printf("ok\n");
        } else if (strcmp(line, "pushrsp\n") == 0) {
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
            printf("notify %d\n", notify);
        } else if (strcmp(line, "takersp\n") == 0) {
            if (!RING_HAS_UNCONSUMED_RESPONSES(&front)) {
                printf("none\n");
            } else {
                blkif_response_t r;
                RING_COPY_RESPONSE(&front, front.rsp_cons, &r);
                front.rsp_cons++;
                printf("rsp %llu %u %d\n", (unsigned long long)r.id, r.operation, r.status);
            }
        } else if (strcmp(line, "finalreq\n") == 0) {
            RING_FINAL_CHECK_FOR_REQUESTS(&back, work);
            printf("more %d\n", work != 0);
        } else if (strcmp(line, "finalrsp\n") == 0) {
            RING_FINAL_CHECK_FOR_RESPONSES(&front, work);
            printf("more %d\n", work != 0);
        } else if (strcmp(line, "dump\n") == 0) {
            printf("pvt %u %u %u %u\nmem ", front.req_prod_pvt, front.rsp_cons,
                   back.rsp_prod_pvt, back.req_cons);
            for (size_t i = 0; i < page_len; i++)
                printf("%02x", page[i]);
            printf("\n");
        } else {
            fprintf(stderr, "bad script line: %s", line);
            return 1;
        }
    }
    free(page);
    return 0;
}
