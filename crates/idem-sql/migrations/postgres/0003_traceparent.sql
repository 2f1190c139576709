-- The W3C traceparent of the span that submitted or fired a task (NULL unless traces are recorded).
ALTER TABLE tasks ADD COLUMN traceparent TEXT;
