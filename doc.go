// Package sagaflow holds what the whole repository shares from its root:
// the version of the binaries and the development defaults of .env (the
// OpenAPI document of the order system's REST API is in package docs). The engine is under
// saga/ (saga, saga/coordinator, saga/pgstore, saga/amqpbus, saga/worker,
// saga/service, saga/sagaprom, saga/pgmigrate); docs/architecture.md maps
// the packages.
package sagaflow
