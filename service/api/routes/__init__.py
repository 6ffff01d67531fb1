"""HTTP routes, one module per resource. Each route parses its body with a schema,
calls the domain with plain values, and turns the result into a response schema."""
