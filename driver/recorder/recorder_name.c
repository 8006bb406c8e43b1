/*
 * recorder_name.c - the record file of one writer: "records-<name>.jsonl", beside the probe's
 * records.jsonl (docs/record-format.md, "Streams").
 *
 * Environment: portable C, no headers beyond probe_record.h, no allocation; called at
 * PASSIVE_LEVEL by HotAddRecorderStart (recorder_wdm.c) and by the host tests.
 */
#include "probe_record.h"

static int
HapWriterNameChar(unsigned short Char)
{
    return (Char >= 'a' && Char <= 'z') || (Char >= 'A' && Char <= 'Z') ||
           (Char >= '0' && Char <= '9') || Char == '_' || Char == '-';
}

_Use_decl_annotations_
unsigned int
HapWriterFileName(const unsigned short *Name, unsigned short *Out, unsigned int Capacity)
{
    static const char prefix[] = HAP_WRITER_FILE_PREFIX;
    static const char suffix[] = HAP_WRITER_FILE_SUFFIX;
    unsigned int length = 0;
    unsigned int index;
    unsigned int used = 0;

    while (Name[length] != 0) {
        if (length == HAP_WRITER_NAME_MAX || !HapWriterNameChar(Name[length])) {
            return 0;
        }
        length++;
    }
    if (length == 0 || Capacity < (sizeof(prefix) - 1u) + length + (sizeof(suffix) - 1u) + 1u) {
        return 0;
    }
    for (index = 0; prefix[index] != 0; index++) {
        Out[used++] = (unsigned short)prefix[index];
    }
    for (index = 0; index < length; index++) {
        Out[used++] = Name[index];
    }
    for (index = 0; suffix[index] != 0; index++) {
        Out[used++] = (unsigned short)suffix[index];
    }
    Out[used] = 0;
    return used;
}
