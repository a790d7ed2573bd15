// Package control is the twin's other half: what the plant wants each
// machine to do and how it gets there. Twins keeps each machine's desired
// and reported documents (versions, per-field update times, the delta
// between them); Commands keeps one-shot operations and their delivery
// lifecycle (pending → delivered → accepted/rejected → succeeded/failed, or
// expired). Both persist through a store (files embedded, PostgreSQL at
// scale) and tell subscribers of every change, which the API, the live
// stream, the MQTT broker and the Kafka desired topic carry on.
package control
