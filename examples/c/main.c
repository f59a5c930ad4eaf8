/*
 * prefine from C: open a backbone, register an adapter from a directory and another from bytes
 * in memory, predict (JSON), embed, and show how errors are reported.
 *
 *   cc examples/c/main.c -Icrates/prefine-ffi/include target/debug/libprefine_ffi.a -lm -lpthread -ldl
 *   ./a.out MODEL_DIR NER_ADAPTER_DIR TC_ADAPTER_DIR
 *
 * Prints one JSON object per line: {"ner": ..., "tc": ..., "embedding": [...]} and the errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefine.h"

static unsigned char *read_file(const char *dir, const char *name, size_t *len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static int fail(const char *what) {
  const char *err = prefine_last_error();
  fprintf(stderr, "%s failed: %s\n", what, err ? err : "(no message)");
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL_DIR NER_ADAPTER_DIR TC_ADAPTER_DIR\n", argv[0]);
    return 2;
  }
  PrefineEngine *engine = prefine_engine_open(argv[1]);
  if (!engine) return fail("prefine_engine_open");

  /* A NER adapter from its directory. */
  if (prefine_adapter_register(engine, "ner", argv[2]) != PREFINE_OK) return fail("register ner");

  /* A TC adapter from bytes, as an app would hand in its bundled assets. */
  const char *names[] = {"adapter.json", "labels.json", "head.safetensors", "adapter_config.json",
                         "adapter_model.safetensors"};
  PrefineFile files[5];
  unsigned char *bufs[5];
  size_t nfiles = 0;
  for (size_t i = 0; i < 5; i++) {
    size_t len = 0;
    unsigned char *b = read_file(argv[3], names[i], &len);
    if (!b) continue; /* optional files (a head-only adapter has no LoRA files) */
    bufs[nfiles] = b;
    files[nfiles].name = names[i];
    files[nfiles].data = b;
    files[nfiles].len = len;
    nfiles++;
  }
  if (prefine_adapter_register_memory(engine, "tc", files, nfiles) != PREFINE_OK)
    return fail("register tc from memory");
  for (size_t i = 0; i < nfiles; i++) free(bufs[i]);

  const char *texts[] = {"Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
                         "The film was a delight from start to finish."};
  char *ner = prefine_predict(engine, "ner", texts, 2, "simple");
  if (!ner) return fail("predict ner");
  char *tc = prefine_predict(engine, "tc", texts, 2, NULL);
  if (!tc) return fail("predict tc");

  size_t dim = prefine_embedding_dim(engine);
  float *emb = malloc(2 * dim * sizeof(float));
  if (prefine_embed(engine, texts, 2, NULL, emb, 2 * dim) != PREFINE_OK) return fail("embed");

  printf("{\"ner\": %s, \"tc\": %s, \"embedding\": [", ner, tc);
  for (size_t i = 0; i < 2 * dim; i++) printf(i ? ",%.8g" : "%.8g", emb[i]);
  printf("]}\n");
  prefine_string_free(ner);
  prefine_string_free(tc);
  free(emb);

  /* Errors are values, never crashes: an unknown adapter, invalid UTF-8, a NULL engine. */
  const char *bad_utf8[] = {"caf\xc3"};
  if (prefine_predict(engine, "nope", texts, 1, NULL) == NULL)
    printf("error: %s\n", prefine_last_error());
  if (prefine_predict(engine, "ner", bad_utf8, 1, NULL) == NULL)
    printf("error: %s\n", prefine_last_error());
  if (prefine_predict(NULL, "ner", texts, 1, NULL) == NULL)
    printf("error: %s\n", prefine_last_error());
  if (prefine_adapter_unregister(engine, "ner") != PREFINE_OK) return fail("unregister");
  if (prefine_predict(engine, "ner", texts, 1, NULL) == NULL)
    printf("error: %s\n", prefine_last_error());

  prefine_engine_free(engine);
  return 0;
}
