/*---
description = "The RFM segment rule table: one row per named segment, in priority order. The first rule whose score ranges (inclusive) contain a customer's R, F and M scores names the customer's segment; customers no rule matches are 'Other'. Edit the rows to change the segmentation."
grain = ["priority"]
publish = false

[columns]
priority = "Rule order: lower numbers are tried first."
segment  = "Segment name."
r_min    = "Lowest R score of the rule."
r_max    = "Highest R score of the rule."
f_min    = "Lowest F score of the rule."
f_max    = "Highest F score of the rule."
m_min    = "Lowest M score of the rule."
m_max    = "Highest M score of the rule."

[checks]
unique   = ["priority", "segment"]
not_null = ["priority", "segment"]
---*/
select
    cast(column1 as bigint) as priority,
    column2                 as segment,
    cast(column3 as bigint) as r_min,
    cast(column4 as bigint) as r_max,
    cast(column5 as bigint) as f_min,
    cast(column6 as bigint) as f_max,
    cast(column7 as bigint) as m_min,
    cast(column8 as bigint) as m_max
from (values
    ( 1, 'Champions',          4, 5, 4, 5, 4, 5),
    ( 2, 'Loyal',              3, 5, 4, 5, 1, 5),
    ( 3, 'Can''t Lose',        1, 2, 4, 5, 4, 5),
    ( 4, 'At Risk',            1, 2, 3, 5, 1, 5),
    ( 5, 'Potential Loyalist', 4, 5, 2, 3, 1, 5),
    ( 6, 'New',                5, 5, 1, 1, 1, 5),
    ( 7, 'Promising',          4, 4, 1, 1, 1, 5),
    ( 8, 'Need Attention',     3, 3, 2, 3, 1, 5),
    ( 9, 'About to Sleep',     3, 3, 1, 1, 1, 5),
    (10, 'Hibernating',        2, 2, 1, 2, 1, 5),
    (11, 'Lost',               1, 1, 1, 2, 1, 5)
)
