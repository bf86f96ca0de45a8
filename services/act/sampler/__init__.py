"""The sampler: budgeted review decisions for the annotated, criticized item stream."""
