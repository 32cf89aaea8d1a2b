/* jobs.h - jobs: the calls of one business operation, with their cost and
 * price together (the seed systems' signature feature).
 *
 *   POST /v1/jobs                      create {"type", "metadata"?}
 *   GET  /v1/jobs/{id}                 the summary: calls, tokens, cost, price, margin
 *   POST /v1/jobs/{id}/complete|fail   end it (job_based teams: one credit on complete)
 *
 * and the seed's paths on the same code: POST /api/jobs/create,
 * POST /api/jobs/{id}/complete, GET /api/teams/{id}/usage (the
 * llm-call paths are chat completions with the job attached, served by
 * the gateway).
 *
 * A job belongs to the team of the key that made it (a config key, which
 * has no team, owns its jobs by its alias); another team neither sees it
 * (404) nor attaches calls to it. Calls attach with the x-tollgate-job
 * header. Which jobs are running is kept in a per-loop cache filled when
 * jobs are created or looked up, and emptied of a job when its status
 * changes anywhere (NOTIFY), so attaching costs one database query per
 * job and instance, not one per call. Jobs need a database. */
#ifndef TG_DAEMON_JOBS_H
#define TG_DAEMON_JOBS_H

#include <stdbool.h>

#include "daemon/http_server.h"
#include "daemon/store.h"

typedef struct jobs jobs;

/* Who is asking: a database key (team_id, key_id set) or a config key
 * (both NULL; owner by alias). */
typedef struct job_owner {
    const char *team_id;
    const char *key_id;
    const char *key_alias;
} job_owner;

/* st NULL: DB-less; every job request is a 503 saying jobs need a database. */
jobs *jobs_new(store *st);
void jobs_free(jobs *j);

/* Answers a jobs request (method and path checked here): rest is the path
 * after "/v1/jobs" or "/api/jobs" ("", "/create", "/<id>", "/<id>/complete")
 * or, for usage, the team id of "/api/teams/<id>/usage" with usage true. */
void jobs_handle(jobs *j, const job_owner *who, http_req *req, const char *rest, bool usage);

/* May a call of who attach to job_id? 0 yes; -ENOENT not known here (look
 * it up with jobs_lookup, then ask again); -EPERM not the caller's (answer
 * 404); -EALREADY the job has ended (answer 409); -EINVAL not a UUID. */
int jobs_check(jobs *j, const job_owner *who, const char *job_id);

/* Loads job_id into the cache; done(ud, found) from the loop: found 1,
 * 0 no such job, -1 the database could not answer. 0 or
 * -ENOMEM/-ESHUTDOWN (then done never runs). *q (may be NULL) receives
 * the query for pg_cancel. */
int jobs_lookup(jobs *j, const char *job_id, void (*done)(void *ud, int found), void *ud,
                pg_query **q);

/* A job's row changed somewhere (NOTIFY jobs:<id>): forget it. */
void jobs_forget(jobs *j, const char *job_id);
/* Notifications may have been missed (the listener reconnected): forget
 * every cached job (each is looked up again at its next call). */
void jobs_forget_all(jobs *j);

#endif
