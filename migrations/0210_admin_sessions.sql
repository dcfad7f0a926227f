-- Revocable admin sessions (issue 12): every admin JWT carries the admin's token version, and
-- every authenticated request compares it with this column. Deleting an admin, changing its
-- role, tenant or password, or `POST /admin/v1/admins/{id}/revoke-sessions` bumps it, which
-- ends every token issued before.
ALTER TABLE admin_users ADD COLUMN token_version bigint NOT NULL DEFAULT 0;
