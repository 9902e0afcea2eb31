/*
 * The VM runs no Python source: every module is frozen bytecode, and the few
 * strings the standard library compiles at import (dataclasses' methods,
 * namedtuple's __new__) are compiled at build time (build/precompile.py,
 * plugin/precompiled_exec.py). So CPython's parser and compiler, a fifth of the
 * module's code and of what V8 compiles at every Envoy start, are not linked:
 * these definitions stand in for their entry points, and the linker leaves
 * their object files out. Compiling source in the VM raises SystemError.
 */
#define Py_BUILD_CORE 1
#define NEED_OPCODE_TABLES /* _PyOpcode_Caches and _PyOpcode_Deopt live in compile.o */
#include <Python.h>
#include "internal/pycore_ast.h"
#include "internal/pycore_compile.h"
#include "internal/pycore_opcode.h"
#include "internal/pycore_parser.h"
#include "internal/pycore_symtable.h"

/* From Parser/pegen.h and Parser/tokenizer.h, not installed: traceback.c
   calls them to underline the failing part of a source line, which a VM
   without source files never shows. */
Py_ssize_t _PyPegen_byte_offset_to_character_offset(PyObject *line, Py_ssize_t col_offset);
Py_ssize_t _PyPegen_calculate_display_width(PyObject *segment, Py_ssize_t character_offset);
char *_PyTokenizer_FindEncodingFilename(int fd, PyObject *filename);

static void *no_compiler(const char *what) {
    PyErr_Format(PyExc_SystemError, "%s: this VM has no Python compiler (the plugin runs "
                 "frozen bytecode only)", what);
    return NULL;
}

mod_ty _PyParser_ASTFromString(const char *str, PyObject *filename, int mode,
                               PyCompilerFlags *flags, PyArena *arena) {
    (void)str; (void)filename; (void)mode; (void)flags; (void)arena;
    return no_compiler("parsing source");
}

mod_ty _PyParser_ASTFromFile(FILE *fp, PyObject *filename, const char *enc, int mode,
                             const char *ps1, const char *ps2, PyCompilerFlags *flags,
                             int *errcode, PyArena *arena) {
    (void)fp; (void)filename; (void)enc; (void)mode; (void)ps1; (void)ps2; (void)flags;
    (void)errcode; (void)arena;
    return no_compiler("parsing a file");
}

PyCodeObject *_PyAST_Compile(mod_ty mod, PyObject *filename, PyCompilerFlags *flags,
                             int optimize, PyArena *arena) {
    (void)mod; (void)filename; (void)flags; (void)optimize; (void)arena;
    return no_compiler("compiling an AST");
}

int _PyAST_Validate(mod_ty mod) {
    (void)mod;
    no_compiler("validating an AST");
    return 0;
}

int _PyAST_Optimize(mod_ty mod, PyArena *arena, _PyASTOptimizeState *state) {
    (void)mod; (void)arena; (void)state;
    no_compiler("optimizing an AST");
    return 0;
}

Py_ssize_t _PyPegen_byte_offset_to_character_offset(PyObject *line, Py_ssize_t col_offset) {
    (void)line;
    return col_offset;
}

Py_ssize_t _PyPegen_calculate_display_width(PyObject *segment, Py_ssize_t character_offset) {
    (void)segment;
    return character_offset;
}

char *_PyTokenizer_FindEncodingFilename(int fd, PyObject *filename) {
    (void)fd; (void)filename;
    return NULL; /* utf-8 */
}

/* A bytecode's stack effect, for frame.f_lineno assignment (debuggers) and
   dis.stack_effect: unknown here. */
int PyCompile_OpcodeStackEffect(int opcode, int oparg) {
    (void)opcode; (void)oparg;
    return PY_INVALID_STACK_EFFECT;
}

int PyCompile_OpcodeStackEffectWithJump(int opcode, int oparg, int jump) {
    (void)opcode; (void)oparg; (void)jump;
    return PY_INVALID_STACK_EFFECT;
}

/* The type object.c readies with the others; no symbol table is ever built. */
PyTypeObject PySTEntry_Type = {
    PyVarObject_HEAD_INIT(&PyType_Type, 0)
    .tp_name = "symtable entry",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

/* Private name mangling, which type() applies to __slots__: in class Ham,
   "__spam" is "_Ham__spam"; dunder names, dotted names and classes named only
   with underscores are left alone. */
PyObject *_Py_Mangle(PyObject *privateobj, PyObject *ident) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(ident);
    if (privateobj == NULL || !PyUnicode_Check(privateobj) || n < 2 ||
        PyUnicode_READ_CHAR(ident, 0) != '_' || PyUnicode_READ_CHAR(ident, 1) != '_' ||
        (PyUnicode_READ_CHAR(ident, n - 1) == '_' && PyUnicode_READ_CHAR(ident, n - 2) == '_') ||
        PyUnicode_FindChar(ident, '.', 0, n, 1) != -1)
        return Py_NewRef(ident);
    Py_ssize_t length = PyUnicode_GET_LENGTH(privateobj), start = 0;
    while (start < length && PyUnicode_READ_CHAR(privateobj, start) == '_') start++;
    if (start == length) return Py_NewRef(ident);
    PyObject *stripped = PyUnicode_Substring(privateobj, start, length);
    if (stripped == NULL) return NULL;
    PyObject *mangled = PyUnicode_FromFormat("_%U%U", stripped, ident);
    Py_DECREF(stripped);
    return mangled;
}
