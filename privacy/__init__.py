"""Privacy accounting: DP events as data, accountants that compose them, budgets."""
