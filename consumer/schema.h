/* schema.h: validates JSON documents against the JSON Schemas in events/, which CMake compiles
 * into the binary (cmake/embed_schemas.cmake). The validator implements the subset of JSON Schema
 * draft 2020-12 that those schemas use; a test checks it agrees with the python jsonschema package
 * on every example, valid and invalid. */
#ifndef ROTOR_SCHEMA_H
#define ROTOR_SCHEMA_H

#include <jansson.h>
#include <stddef.h>

typedef struct {
    const char *type; /* event type, e.g. "rotation.requested" */
    const char *text; /* schema JSON */
} schema_source_t;

/* Generated table, terminated by {NULL, NULL}. */
extern const schema_source_t schema_sources[];

/* Returns 1 if a schema exists for type, else 0. */
int schema_known(const char *type);

/* Validates doc (borrowed) against the schema of type. Returns 0 if valid; ROTOR_ENOTFOUND if no
 * schema; ROTOR_EINVALID with a reason such as "/data/rotation_id: does not match pattern" in
 * reason otherwise. */
int schema_validate(const char *type, const json_t *doc, char *reason, size_t reasonlen);

#endif
