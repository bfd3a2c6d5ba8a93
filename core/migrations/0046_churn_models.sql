-- Churn-score weights fitted on outcomes (`switchboard models fit-churn`): the report (the
-- fitted weights and their held-out AUC against the hand-set ones); the newest active one
-- scores customers, none: the hand-set weights.
CREATE TABLE churn_models (
    id         uuid PRIMARY KEY,
    fitted_at  timestamptz NOT NULL,
    report     jsonb NOT NULL,
    active     boolean NOT NULL DEFAULT false
);
CREATE INDEX churn_models_active ON churn_models (fitted_at DESC) WHERE active;
