-- Columns and states nothing reads or writes: users' e-mail (the API has no e-mail; a
-- column that holds nothing only widens what a leak could carry later) and the jobs'
-- 'cancelled' status (DELETE /jobs/{id} removes a job instead).

ALTER TABLE app.users DROP CONSTRAINT users_email_both_or_neither;
ALTER TABLE app.users DROP COLUMN email_enc;
ALTER TABLE app.users DROP COLUMN email_digest;

-- Any cancelled row from before becomes what cancelling now does: gone.
DELETE FROM app.jobs WHERE status = 'cancelled';
ALTER TABLE app.jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE app.jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed'));
