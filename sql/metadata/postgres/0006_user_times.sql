-- Users' and sessions' times become timestamptz, as every other table's are (they were Unix
-- seconds): one time representation in the store.

ALTER TABLE pgshift_meta.app_user
    ALTER COLUMN created_at TYPE timestamptz USING to_timestamp(created_at);

ALTER TABLE pgshift_meta.user_session
    ALTER COLUMN created_at TYPE timestamptz USING to_timestamp(created_at),
    ALTER COLUMN expires_at TYPE timestamptz USING to_timestamp(expires_at);
