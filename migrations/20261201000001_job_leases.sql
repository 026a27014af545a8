-- Job leases: a claimed job belongs to one executor for a short lease that the executor renews
-- while the job runs. An executor that stops or crashes stops renewing; its jobs go back to the
-- queue when the lease runs out (or fail once they have been tried max_attempts times), so no
-- job stays `running` forever. Every write an executor makes names its own id, so an executor
-- that lost its lease (its job was re-queued and claimed by another) changes nothing.

-- Jobs left running by an executor of the previous version have no lease: run them again.
UPDATE app.jobs SET status = 'queued', locked_at = NULL WHERE status = 'running';

ALTER TABLE app.jobs
    ADD COLUMN lease_owner      uuid,
    ADD COLUMN lease_expires_at timestamptz,
    ADD CONSTRAINT jobs_running_has_lease
        CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL));

-- The reaper's scan: running jobs by lease expiry.
CREATE INDEX jobs_lease_idx ON app.jobs (lease_expires_at) WHERE status = 'running';

DROP FUNCTION app.claim_due_jobs(integer);
DROP FUNCTION app.finish_job(uuid, text, bytea, text, timestamptz);

-- Re-queues the running jobs whose lease ran out; a job already tried p_max_attempts times
-- fails instead, with a reason its owner can read. Returns how many jobs were re-queued or
-- failed. Safe to call from every executor at once (SKIP LOCKED).
CREATE FUNCTION app.reap_expired_jobs(p_max_attempts integer)
    RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    reaped integer;
BEGIN
    UPDATE app.jobs j
       SET status           = CASE WHEN j.attempts >= p_max_attempts THEN 'failed' ELSE 'queued' END,
           error            = CASE WHEN j.attempts >= p_max_attempts
                                   THEN format('the job was interrupted %s times before it could finish', j.attempts)
                                   ELSE j.error END,
           run_at           = CASE WHEN j.attempts >= p_max_attempts THEN j.run_at ELSE now() END,
           lease_owner      = NULL,
           lease_expires_at = NULL,
           locked_at        = NULL
      FROM (SELECT q.id FROM app.jobs q
             WHERE q.status = 'running' AND q.lease_expires_at < now()
               FOR UPDATE SKIP LOCKED) expired
     WHERE j.id = expired.id;
    GET DIAGNOSTICS reaped = ROW_COUNT;
    RETURN reaped;
END
$$;

-- Claims up to max_jobs due jobs of any owner for p_executor, each for p_lease. SKIP LOCKED lets
-- several executors claim concurrently without waiting on or double-claiming a row.
CREATE FUNCTION app.claim_due_jobs(max_jobs integer, p_executor uuid, p_lease interval)
    RETURNS SETOF app.jobs
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE app.jobs j
       SET status = 'running', locked_at = now(), attempts = j.attempts + 1,
           lease_owner = p_executor, lease_expires_at = now() + p_lease
      FROM (SELECT q.id
              FROM app.jobs q
             WHERE q.status = 'queued' AND q.run_at <= now()
             ORDER BY q.run_at
             LIMIT greatest(least(max_jobs, 1000), 0)
               FOR UPDATE SKIP LOCKED) due
     WHERE j.id = due.id
    RETURNING j.*;
$$;

-- Extends p_executor's leases on the given jobs; returns the ids it still holds (a job missing
-- from the answer was deleted, re-queued or claimed by another executor: stop working on it).
CREATE FUNCTION app.renew_job_leases(p_executor uuid, p_jobs uuid[], p_lease interval)
    RETURNS SETOF uuid
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE app.jobs j
       SET lease_expires_at = now() + p_lease
     WHERE j.id = ANY (p_jobs) AND j.status = 'running' AND j.lease_owner = p_executor
    RETURNING j.id;
$$;

-- Finishes one of p_executor's running jobs. p_status is 'succeeded', 'failed' or 'queued' (an
-- executor shutting down hands the job back: the attempt is not counted). Returns false when the
-- executor no longer holds the job (deleted, re-queued after its lease ran out).
-- p_result_enc is already encrypted by the caller's expression:
--   SELECT app.finish_job($1, $2, 'succeeded', crypto.pgp_sym_encrypt($3, $4), NULL)
CREATE FUNCTION app.finish_job(p_job_id uuid,
                               p_executor uuid,
                               p_status text,
                               p_result_enc bytea,
                               p_error text)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('succeeded', 'failed', 'queued') THEN
        RAISE EXCEPTION 'finish_job: status must be succeeded, failed or queued'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE app.jobs j
       SET status           = p_status,
           result_enc       = p_result_enc,
           error            = p_error,
           attempts         = CASE WHEN p_status = 'queued' THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
           lease_owner      = NULL,
           lease_expires_at = NULL,
           locked_at        = NULL
     WHERE j.id = p_job_id AND j.status = 'running' AND j.lease_owner = p_executor;
    RETURN FOUND;
END
$$;

REVOKE ALL ON FUNCTION app.reap_expired_jobs(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.claim_due_jobs(integer, uuid, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.renew_job_leases(uuid, uuid[], interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.finish_job(uuid, uuid, text, bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.reap_expired_jobs(integer) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.claim_due_jobs(integer, uuid, interval) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.renew_job_leases(uuid, uuid[], interval) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.finish_job(uuid, uuid, text, bytea, text) TO portcullis_app;
