DELETE FROM idempotency_keys WHERE owner_kind = 'staff';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (user_id, key);
ALTER TABLE idempotency_keys DROP COLUMN owner_kind;
DROP TABLE staff_sign_in_failures;
DROP TABLE staff;
