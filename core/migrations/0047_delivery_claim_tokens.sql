-- Whose claim on a reply it is: only its holder releases it (a sender whose claim lapsed must
-- not free the claim another consumer holds now).
ALTER TABLE deliveries ADD COLUMN claimed_by uuid;
